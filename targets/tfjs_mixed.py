"""Mixed TF.js weights: uint8 for most tensors, float16 for the few that uint8 hurts.

TF.js quantizes a tensor to uint8 with one min and scale for the whole tensor, so a tensor whose
values span a wide range with most of them near zero (depthwise kernels after BatchNorm
folding) loses most of its information. Each stored float32 tensor of the converted graph
model (the weights the browser really loads, after folding) is ranked by its measured uint8
error, ||w - dequantize(quantize(w))|| / ||w||; the search (targets/search.py) keeps the fewest
of the worst in float16 that bring agreement with Keras on the validation images up to the
target, each candidate run in Node. Candidates are written by tensorflowjs' own weight writer
from the float32 graph model, so only the weights' storage differs between them.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from targets import search


def convert(float_folder: Path, out_folder: Path, reference_probs: np.ndarray, validation: np.ndarray,
            target: float, run) -> dict:
    """Write into `out_folder` the graph model from `float_folder` with the fewest tensors in
    float16 (the rest uint8) that agrees with `reference_probs` on `validation` up to `target`;
    returns the search's record. `run(folder, images)` gives a graph model's probabilities."""
    from tensorflowjs import read_weights

    model_json = json.loads((float_folder / "model.json").read_text())
    groups = read_weights.read_weights(model_json["weightsManifest"], str(float_folder))
    errors = {entry["name"]: _uint8_error(entry["data"])
              for group in groups for entry in group if entry["data"].dtype == np.float32}
    ranked = sorted(errors, key=lambda name: -errors[name])
    sizes: dict[int, int] = {}

    def measure(kept: int) -> float:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / "candidate"
            sizes[kept] = _write(model_json, groups, ranked[:kept], folder)
            return search.agreement(reference_probs, run(folder, validation))

    aim = search.aim(target, len(validation))
    kept, trials = search.fewest(len(ranked), measure, aim)
    for trial in trials:
        trial["bytes"] = sizes[trial["kept"]]
    _write(model_json, groups, ranked[:kept], out_folder)
    return {
        "kept_float16": "tensors with the largest uint8 error, the rest uint8",
        "float16_tensors": ranked[:kept],
        "tensors": len(ranked),
        "target_agreement": target, "validation_images": len(validation), "aim": round(aim, 4),
        "validation_agreement": next(t["agreement"] for t in trials if t["kept"] == kept),
        "reached": any(t["kept"] == kept and t["agreement"] >= aim for t in trials),
        "trials": trials,
        "worst_tensors": [{"name": name, "uint8_error": round(errors[name], 4)} for name in ranked[:5]],
    }


def _uint8_error(weights: np.ndarray) -> float:
    """Relative error of storing `weights` as TF.js uint8 (one affine range per tensor)."""
    from tensorflowjs import quantization

    quantized, metadata = quantization.quantize_weights(weights, np.uint8)
    restored = quantization.dequantize_weights(quantized, metadata)
    norm = float(np.linalg.norm(weights))
    return float(np.linalg.norm(weights - restored)) / norm if norm else 0.0


def _write(model_json: dict, groups: list, float16_names: list[str], folder: Path) -> int:
    """A graph model in `folder` with `float16_names` stored as float16 and the other float32
    tensors as uint8; returns its bytes."""
    from tensorflowjs import write_weights

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    dtype_map = {"uint8": True, "float16": [_literal(name) for name in float16_names]}
    manifest = write_weights.write_weights(groups, str(folder), quantization_dtype_map=dtype_map)
    (folder / "model.json").write_text(json.dumps({**model_json, "weightsManifest": manifest}))
    return sum(p.stat().st_size for p in folder.iterdir())


def _literal(name: str) -> str:
    """`name` as a glob (tensorflowjs matches the map's names with fnmatch) matching only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
