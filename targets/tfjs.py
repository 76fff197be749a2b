"""TF.js target: a graph model (model.json + weight shards), verified in Node with the wasm backend.

A text model's folder also holds vocab.txt, and model.json's metadata the tokenizer's contract:
targets/js/wordpiece.mjs turns text into the model's token ids in a page or in Node.

Weights float32, float16, uint8 (affine-quantized, dequantized at load) or mixed (uint8 with the
tensors uint8 hurts most in float16: targets/tfjs_mixed.py). Labels and the input
contract go into model.json's `userDefinedMetadata`, so a page needs nothing else.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from targets import tfjs_mixed
from targets.base import Artifact, Mode, Target, smallest_mode
from targets.native_logs import native_logs_filtered
from targets.errors import FactoryError, one_line
from targets.latency import run_timer

MODES = (
    Mode("float32", 0.99, "float32 weights"),
    # float16 had the accuracy of float32 at half the size in every bench run so far
    Mode("float16", 0.99, "float16 weights, dequantized at load", in_bench=False),
    # one min/scale per tensor: depthwise kernels suffer (0.815 agreement for EfficientNet-Lite0)
    Mode("uint8", 0.94, "uint8 weights (affine per tensor), dequantized at load"),
    Mode("mixed", 0.99, "uint8 weights but the fewest tensors in float16 that reach the agreement target on "
         "validation images", search=True),
    smallest_mode(needs_calibration=False),
)
JS_DIR = Path(__file__).parent / "js"
RUNNER = JS_DIR / "run_tfjs.mjs"
_DIST = JS_DIR / "node_modules" / "@tensorflow"
BROWSER_FILES = {  # the TF.js bundle a page loads to run these artifacts (npm, never a CDN), and the tokenizer
    "wordpiece.mjs": JS_DIR / "wordpiece.mjs",
    "tf.min.js": _DIST / "tfjs" / "dist" / "tf.min.js",
    "tf-backend-wasm.min.js": _DIST / "tfjs-backend-wasm" / "dist" / "tf-backend-wasm.min.js",
    "tfjs-backend-wasm.wasm": _DIST / "tfjs-backend-wasm" / "dist" / "tfjs-backend-wasm.wasm",
    "tfjs-backend-wasm-simd.wasm": _DIST / "tfjs-backend-wasm" / "dist" / "tfjs-backend-wasm-simd.wasm",
    "tfjs-backend-wasm-threaded-simd.wasm": _DIST / "tfjs-backend-wasm" / "dist" / "tfjs-backend-wasm-threaded-simd.wasm",
}


def node_ready() -> str | None:
    """None if Node and the npm packages are installed, else what to run to install them."""
    if shutil.which("node") is None:
        return "Node.js is not installed (apt-get install nodejs)"
    if not (JS_DIR / "node_modules" / "@tensorflow" / "tfjs").is_dir():
        return f"TF.js packages are not installed: npm ci --prefix {JS_DIR}"
    return None


class TFJSTarget(Target):
    name = "tfjs"
    modes = MODES
    browser_files = BROWSER_FILES

    def ready(self) -> str | None:
        return node_ready()

    def convert(self, model, quantize: str, out_dir: Path, context) -> Artifact:
        mode = self.converted_mode(quantize)
        start = time.perf_counter()
        folder = Path(out_dir) / f"tfjs_{quantize}"
        record = None
        if quantize == "mixed":
            _require_node()
            with tempfile.TemporaryDirectory() as scratch:
                float_folder = Path(scratch) / "float32"
                _convert_graph_model(model, float_folder, "float32", context)
                record = tfjs_mixed.convert(float_folder, folder, model.predict(context.validation, verbose=0),
                                            context.validation, context.threshold(mode), run_node)
        else:
            _convert_graph_model(model, folder, quantize, context)
        if context.vocab_file:  # a text model: the page tokenizes with it (targets/js/wordpiece.mjs)
            shutil.copyfile(context.vocab_file, folder / "vocab.txt")
        check_quantized(folder, quantize)
        files = sorted(p for p in folder.iterdir() if p.is_file())
        return Artifact(self.name, quantize, folder / "model.json", files, round(time.perf_counter() - start, 2),
                        record)

    def predict(self, artifact: Artifact, images: np.ndarray) -> np.ndarray:
        return run_node(artifact.path.parent, images)

    def latency(self, artifact: Artifact, *, runs: int, warmup: int = 5, batch: int = 1, threads: int = 1) -> dict:
        _require_node()
        contract = json.loads(artifact.path.read_text())["userDefinedMetadata"]["edgefactory"]["input"]
        command = ["node", str(RUNNER), "latency", str(artifact.path.parent), contract["dtype"],
                   ",".join(map(str, contract["shape"])), str(runs), str(warmup), str(batch)]
        return run_timer(command, f"{artifact.path.parent.name} in Node")

    def describe(self, artifact: Artifact) -> dict:
        manifest = json.loads(artifact.path.read_text())
        return {"weight_types": stored_weight_types(manifest), "format": manifest.get("format")}


def _convert_graph_model(model, folder: Path, quantize: str, context) -> None:
    """The tensorflowjs converter's graph model of `model`, weights stored as `quantize`."""
    from targets.tf_setup import tf

    shape = list(model.input_shape[1:])
    if context.vocab_file:  # a text model: int32 token ids, the tokenizer's contract and vocabulary
        contract = {"input": {"shape": shape, "dtype": "int32", "name": context.preprocessing["input"]},
                    "tokenizer": context.preprocessing}
    else:
        contract = {"input": {"shape": shape, "size": shape[:2], "channels": "RGB", "pixel_range": [0, 255],
                              "dtype": "uint8"},
                    "normalization_in_graph": context.preprocessing}
    metadata = {"edgefactory": {"name": context.name, "labels": context.labels, **contract,
                                "output": "probabilities"}}
    with tempfile.TemporaryDirectory() as saved, native_logs_filtered():
        tf.saved_model.save(model, saved)
        try:
            try:
                convert_saved_model(saved, folder, quantize, metadata)
            except ValueError as exc:
                if "_Mkl" not in str(exc):
                    raise
                shutil.rmtree(folder, ignore_errors=True)
                _convert_without_onednn(saved, folder, quantize, metadata)
        except Exception as exc:
            raise FactoryError(f"TF.js conversion ({quantize}) failed: {one_line(exc)}") from exc


def convert_saved_model(saved: str, folder: Path, quantize: str, metadata: dict) -> None:
    from tensorflowjs.converters import tf_saved_model_conversion_v2 as converter

    converter.convert_tf_saved_model(saved, str(folder), metadata=metadata,
                                     quantization_dtype_map=None if quantize == "float32" else {quantize: True})


def _convert_without_onednn(saved: str, folder: Path, quantize: str, metadata: dict) -> None:
    """The same conversion in a process with oneDNN off. On x86 CPUs TensorFlow's oneDNN graph
    rewrites, which the converter's optimizer runs, fuse a LayerNorm into _MklLayerNorm, an op
    TF.js does not have (seen with MiniLM on an Intel Xeon with AVX-512, not on AMD EPYC)."""
    request = json.dumps({"saved": saved, "folder": str(folder), "quantize": quantize, "metadata": metadata})
    code = ("import json, sys; from targets.tfjs import convert_saved_model; r = json.load(sys.stdin); "
            "convert_saved_model(r['saved'], r['folder'], r['quantize'], r['metadata'])")
    result = subprocess.run([sys.executable, "-c", code], input=request, capture_output=True, text=True,
                            cwd=Path(__file__).parent.parent,
                            env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode:
        raise RuntimeError((result.stderr.strip().splitlines() or ["no output"])[-1])


def stored_weight_types(manifest: dict) -> list[str]:
    """How model.json stores its float weights: float32, or the quantized dtype (float16, uint8)."""
    weights = [w for group in manifest["weightsManifest"] for w in group["weights"]]
    return sorted({w.get("quantization", {}).get("dtype", "float32") for w in weights if w["dtype"] == "float32"})


def check_quantized(folder: Path, quantize: str) -> None:
    """Fail if the weights in model.json are not stored as `quantize` promises."""
    stored = stored_weight_types(json.loads((folder / "model.json").read_text()))
    ok = stored == ["float32"] if quantize == "float32" else ("uint8" if quantize == "mixed" else quantize) in stored
    if not ok:
        raise FactoryError(f"{folder.name}: weights are not stored as {quantize}; report this model with --debug")


def _require_node() -> None:
    problem = node_ready()
    if problem:
        raise FactoryError(problem)


def run_node(model_dir: Path, examples: np.ndarray) -> np.ndarray:
    """Probabilities for uint8 images (or a text model's int32 token ids) from the TF.js model in
    `model_dir`, computed in Node."""
    _require_node()
    n = len(examples)
    dtype = "int32" if examples.dtype == np.int32 else "uint8"
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp) / "examples.bin", Path(tmp) / "probs.bin"
        np.ascontiguousarray(examples, dtype=dtype).tofile(inputs)
        result = subprocess.run(
            ["node", str(RUNNER), "predict", str(model_dir), str(inputs), dtype,
             ",".join(map(str, examples.shape[1:])), str(outputs)],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise FactoryError(f"TF.js model {model_dir} failed in Node: {result.stderr.strip()[-500:]}")
        return np.fromfile(outputs, dtype=np.float32).reshape(n, -1)
