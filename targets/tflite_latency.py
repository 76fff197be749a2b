"""Time a .tflite file in a fresh process: `python tflite_latency.py MODEL [--runs N ...]`.

Run as a script (not imported) so the timing process holds no TensorFlow and no training
state: in the process that just trained, a 0.5 ms model was measured at 10-14 ms.
Prints one JSON line: p50/p90 milliseconds at the given batch, threads and runtime.
"""
import argparse
import json
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()

    interpreter = Interpreter(model_path=args.model, num_threads=args.threads)
    detail = interpreter.get_input_details()[0]
    shape = [args.batch, *detail["shape"][1:]]
    interpreter.resize_tensor_input(detail["index"], shape)
    interpreter.allocate_tensors()
    pixels = np.random.default_rng(0).integers(0, 256, shape)
    interpreter.set_tensor(detail["index"], pixels.astype(detail["dtype"]))
    for _ in range(args.warmup):
        interpreter.invoke()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1000)
    print(json.dumps({
        "runtime": "litert", "threads": args.threads, "batch": args.batch, "runs": args.runs,
        "p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90)),
    }))


if __name__ == "__main__":
    main()
