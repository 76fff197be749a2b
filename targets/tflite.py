"""TFLite target: convert (float32, float16, dynamic-range, full int8, QAT int8, int16x8 and
mixed precision), run in LiteRT.

Every mode's weights, activations and input / output types are in MODES below; `qat` converts
a model that quantization-aware training (a training-side step) already prepared; `mixed`
searches which ops stay float (targets/tflite_mixed.py).
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from targets import tflite_metadata, tflite_mixed
from targets.base import QUANTIZATION_AWARE, Artifact, Mode, Target, smallest_mode
from targets.calibration import representative_dataset
from targets.native_logs import native_logs_filtered
from targets.errors import FactoryError, one_line
from targets.latency import run_timer

MODES = (
    Mode("float32", 0.99, "float32 weights and activations"),
    Mode("float16", 0.99, "float16 weights (dequantized at load), float32 activations"),
    Mode("dynamic", 0.97, "int8 weights, float32 activations (int8 on the fly)"),
    Mode("int8", 0.94, "int8 weights and activations calibrated on training images; uint8 (--int8-io: int8) "
         "input/output", calibration=True),
    Mode("qat", 0.94, "int8 as above, after quantization-aware training", calibration=True,
         training=QUANTIZATION_AWARE, text=False),
    Mode("int16x8", 0.94, "int8 weights, int16 activations calibrated on training images; float32 input/output "
         "(LiteRT's int16 kernels are slow on CPUs)", calibration=True, text=False),
    Mode("mixed", 0.99, "int8 with the fewest ops from the input kept float that reach the agreement target on "
         "validation images; float32 input/output", calibration=True, search=True, text=False),
    smallest_mode(needs_calibration=True),
)
_MODES = {m.name: m for m in MODES}


def full_integer(mode: str) -> bool:
    """Modes that are integer end to end, input and output included (int8 weights and activations)."""
    return mode in ("int8", "qat")


@dataclass
class TFLiteTarget(Target):
    int8_io: str = "uint8"  # input/output type of full-integer models: uint8 or int8
    name = "tflite"
    modes = MODES

    def convert(self, model, mode: str, out_dir: Path, context) -> Artifact:
        start = time.perf_counter()
        record = None
        if mode == "mixed":
            flatbuffer, record = tflite_mixed.convert(model, context.calibration, context.validation,
                                                      context.threshold(self.converted_mode(mode)), run_interpreter)
        else:
            flatbuffer = self._convert(model, mode, context)
        path = Path(out_dir) / f"model_{mode}.tflite"
        path.write_bytes(flatbuffer)
        tflite_metadata.attach(path, labels=context.labels, name=context.name, vocab_file=context.vocab_file,
                               text=context.preprocessing if context.vocab_file else None)
        check_quantized(path, mode, self.int8_io)
        return Artifact(self.name, mode, path, [path], round(time.perf_counter() - start, 2), record)

    def _convert(self, model, mode: str, context) -> bytes:
        from targets.tf_setup import tf

        needs_qat = self.converted_mode(mode).training == QUANTIZATION_AWARE
        if needs_qat and not any(type(layer).__name__.startswith("Quantize") for layer in model.layers):
            raise FactoryError("--quantize qat converts a quantization-aware model: run quantization-aware "
                               "training on it first")
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if mode == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif mode == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif mode == "int16x8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset(context.calibration)
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        elif full_integer(mode):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            # QAT learned its ranges; the converter still asks for a representative set (used
            # only for tensors QAT did not cover), so both modes get the calibration images.
            converter.representative_dataset = representative_dataset(context.calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            io_type = tf.uint8 if self.int8_io == "uint8" else tf.int8
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
        try:
            with native_logs_filtered(), warnings.catch_warnings():
                # the calibrated converter's note that uint8 inputs carry no statistics: they need none
                warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
                return converter.convert()
        except Exception as exc:  # the converter raises ConverterError and others
            raise FactoryError(f"TFLite conversion ({mode}) failed: {one_line(exc)}") from exc

    def predict(self, artifact: Artifact, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        return run_interpreter(artifact.path, images, batch_size)

    def latency(self, artifact: Artifact, *, runs: int, warmup: int = 5, batch: int = 1, threads: int = 1) -> dict:
        script = Path(__file__).with_name("tflite_latency.py")
        command = [sys.executable, str(script), str(artifact.path), "--runs", str(runs), "--warmup", str(warmup),
                   "--batch", str(batch), "--threads", str(threads)]
        return run_timer(command, artifact.path.name)

    def describe(self, artifact: Artifact) -> dict:
        return {"tensor_types": tensor_types(artifact.path)}


def make_interpreter(path: Path, num_threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path), num_threads=num_threads)


def tensor_types(path: Path) -> dict:
    """dtype names of the input, the output and every tensor in the file."""
    interpreter = make_interpreter(path)
    return {
        "input": np.dtype(interpreter.get_input_details()[0]["dtype"]).name,
        "output": np.dtype(interpreter.get_output_details()[0]["dtype"]).name,
        "tensors": sorted({np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}),
    }


def check_quantized(path: Path, quantize: str, int8_io: str = "uint8") -> dict:
    """Fail if the file does not hold the number types `quantize` promises (a no-op quantization)."""
    types = tensor_types(path)
    tensors = set(types["tensors"])
    text = types["input"] == "int32"  # a text model's token ids stay int32 in every mode
    float_input = text or types["input"] == "float32"
    expected = {
        "float32": float_input and not tensors & {"int8", "float16"},
        "float16": float_input and "float16" in tensors,
        "dynamic": float_input and "int8" in tensors,
        "int8": (text or types["input"] == int8_io) and types["output"] == int8_io and "int8" in tensors,
        "int16x8": float_input and {"int8", "int16"} <= tensors,
        "mixed": float_input and "int8" in tensors,
    }
    if not expected["int8" if full_integer(quantize) else quantize]:
        raise FactoryError(
            f"{path.name}: the {quantize} conversion did not quantize as asked (input {types['input']}, "
            f"tensor types {', '.join(sorted(tensors))}); report this model with --debug"
        )
    return types


def run_interpreter(path: Path, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Run the .tflite file on uint8 `images` in batches (every core); returns float probabilities."""
    interpreter = make_interpreter(path, num_threads=os.cpu_count())
    input_detail = interpreter.get_input_details()[0]
    outputs = []
    with native_logs_filtered():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" line
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            interpreter.resize_tensor_input(input_detail["index"], batch.shape)
            interpreter.allocate_tensors()
            interpreter.set_tensor(input_detail["index"], _quantize_input(batch, input_detail))
            interpreter.invoke()
            output_detail = interpreter.get_output_details()[0]
            outputs.append(_dequantize_output(interpreter.get_tensor(output_detail["index"]), output_detail))
    return np.concatenate(outputs)


def _quantize_input(batch: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype in (np.float32, np.float16, np.int32):  # pixels, or a text model's token ids
        return batch.astype(dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(batch / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize_output(values: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] in (np.float32, np.float16):
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale
