"""Compressed artifacts against float32: size, gzip size, agreement, accuracy and latency.

`factory bench` on Fashion-MNIST, 5,100 images at 96 px split 2,550 train / 510 validation /
2,040 test (a test split large enough that one image is 0.05 points), EfficientNet-Lite0, the
three default strategies, every TFLite and TF.js quantization. Prints, per strategy and
artifact, its size and gzip size as a ratio to that target's float32 file, its agreement with
Keras, its accuracy's distance from Keras and its batch-1 latency as a ratio to float32 (all
measured in the same run), and records the bench's files in benchmarks/results/compression/.
About 31 minutes on 2 CPU cores.

    python benchmarks/compression.py [--run-folder DIR]
"""
import argparse
import dataclasses
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from factory.bench.config import BENCH_EXPORT, BenchSpec  # noqa: E402
from factory.specs import DataSpec  # noqa: E402
from recording import run_and_record  # noqa: E402

RECORDED = Path(__file__).parent / "results" / "compression"
MODES = ("float32", "float16", "dynamic", "int8", "qat", "int16x8", "mixed", "uint8")


def ratio_table(results: dict) -> list[str]:
    """One markdown row per compressed artifact, each compared with its own float32 file."""
    rows = [r for r in results["artifacts"] if r["status"] == "ok"]
    keras = {s["strategy"]: s["keras_accuracy"] for s in results["strategies"] if s.get("status") == "ok"}
    lines = ["| strategy | artifact | size | gzip size | agreement | accuracy - keras (pt) | p50 latency |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        base = next((r for r in rows if r["strategy"] == row["strategy"] and r["target"] == row["target"]
                     and r["quantize"] == "float32"), None)
        if base is None or row is base:
            continue
        lines.append(
            f"| {row['strategy']} | {row['target']} {row['quantize']} | {row['bytes'] / base['bytes']:.3f}x "
            f"| {row['gzip_bytes'] / base['gzip_bytes']:.3f}x | {row['agreement']:.4f} "
            f"| {100 * (row['accuracy'] - keras[row['strategy']]):+.2f} "
            f"| {row['latency']['p50_ms'] / base['latency']['p50_ms']:.2f}x |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-folder", type=Path,
                        default=Path("runs") / datetime.now().strftime("compression-%Y%m%d-%H%M%S"))
    args = parser.parse_args()
    spec = BenchSpec(DataSpec("fashion-mnist", limit=5100, test_fraction=0.4), args.run_folder,
                     export=dataclasses.replace(BENCH_EXPORT, quantize=MODES),
                     throughput_runs=0, baseline=False, advisor=False)
    run_and_record(spec, RECORDED, ratio_table)


if __name__ == "__main__":
    main()
