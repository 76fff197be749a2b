"""Mixed-precision TFLite: full-integer quantization with the ops that need it kept in float.

Where the int8 loss sits was measured with TFLite's quantization debugger on EfficientNet-Lite0
(Fashion-MNIST, 96 px, 510 validation and 2,040 test images): the first ops carry the largest
error (rmse/scale 3.9 at the stem conv, 3.3 at block 0's depthwise conv, under 1 elsewhere).
Keeping the 1-40 worst-ranked ops in float does not help (0.95-0.98 agreement), because each
float op still reads and writes int8 activations; keeping the graph's first ops in float as one
span does (0.95 -> 0.98 with 15 ops, 0.988 with 47), while a float span at the output end
gains nothing (0.950 -> 0.953). So the search keeps a float span from the input and bisects
its length (targets/search.py); the debugger's ranking is recorded as the evidence. The error
is weight rounding amplified by cancellation more than activation range: int16 activations
(int16x8) still agree on only 0.964, and per-op errors are the same on the images int8 flips
as on the others (the loss is spread, not an outlier input).
"""
from __future__ import annotations

import csv
import io
import tempfile
import warnings
from pathlib import Path

import numpy as np

from targets import search
from targets.calibration import representative_dataset
from targets.native_logs import native_logs_filtered

DEBUG_IMAGES = 32  # calibration images the debugger compares float and int8 ops on
RANKED_SHOWN = 5  # the worst ops by rmse/scale, recorded in the search


def convert(model, calibration: np.ndarray, validation: np.ndarray, target: float, run) -> tuple[bytes, dict]:
    """The flatbuffer with the shortest float span from the input whose agreement with `model`
    on `validation` reaches `target`, and the search's record. `run(path, images)` gives the
    probabilities of a .tflite file in LiteRT."""
    from targets.tf_setup import tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(calibration)
    options = tf.lite.experimental.QuantizationDebugOptions
    with native_logs_filtered(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative_dataset(calibration[:DEBUG_IMAGES]),
            debug_options=options(fully_quantize=False))
        debugger.run()
    ops = _layer_statistics(debugger)
    reference = model.predict(validation, verbose=0)
    built: dict[int, bytes] = {}

    def measure(kept: int) -> float:
        with native_logs_filtered(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            debugger.options = options(denylisted_nodes=[op["tensor"] for op in ops[:kept]], fully_quantize=False)
            built[kept] = debugger.get_nondebug_quantized_model()
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "candidate.tflite"
            path.write_bytes(built[kept])
            return search.agreement(reference, run(path, validation))

    aim = search.aim(target, len(validation))
    kept, trials = search.fewest(len(ops), measure, aim)
    for trial in trials:
        trial["bytes"] = len(built[trial["kept"]])
    record = {
        "kept_float": "ops from the input, in graph order",
        "float_ops": [op["name"] for op in ops[:kept]],
        "ops": len(ops),
        "target_agreement": target, "validation_images": len(validation), "aim": round(aim, 4),
        "validation_agreement": next(t["agreement"] for t in trials if t["kept"] == kept),
        "reached": any(t["kept"] == kept and t["agreement"] >= aim for t in trials),
        "trials": trials,
        "worst_ops": [{"name": op["name"], "rmse_per_scale": op["rmse_per_scale"]}
                      for op in sorted(ops, key=lambda op: -op["rmse_per_scale"])[:RANKED_SHOWN]],
    }
    return built[kept], record


def _layer_statistics(debugger) -> list[dict]:
    """Every quantized op in graph order: its output tensor, a readable name, and its error
    (root mean square, in units of its output's quantization step)."""
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    ops = []
    for row in csv.DictReader(dump):
        scale = float(row["scale"])
        error = float(row["mean_squared_error"]) ** 0.5 / scale if scale else 0.0
        ops.append({"tensor": row["tensor_name"], "rmse_per_scale": round(error, 3),
                    "name": f"{row['op_name']} {row['tensor_name'].split(';')[-1]}"})
    return ops
