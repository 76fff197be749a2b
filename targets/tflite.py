"""TFLite target: convert with the TFLite converter, verify in the LiteRT interpreter."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from factory.tf_setup import tf
from targets.base import Artifact

QUANTIZE_MODES = ("float32",)


class TFLiteTarget:
    name = "tflite"
    quantize_modes = QUANTIZE_MODES
    default_quantize = "float32"

    def convert(self, model, quantize: str, out_dir: Path, *, labels, normalization) -> Artifact:
        start = time.perf_counter()
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        flatbuffer = converter.convert()
        path = Path(out_dir) / f"model_{quantize}.tflite"
        path.write_bytes(flatbuffer)
        return Artifact(self.name, quantize, path, [path], round(time.perf_counter() - start, 2))

    def predict(self, artifact: Artifact, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        return run_interpreter(artifact.path, images, batch_size)


def make_interpreter(path: Path, num_threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path), num_threads=num_threads)


def run_interpreter(path: Path, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Run the .tflite file on `images` in batches; returns float probabilities."""
    interpreter = make_interpreter(path)
    input_detail = interpreter.get_input_details()[0]
    outputs = []
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
    if dtype in (np.float32, np.float16):
        return batch.astype(dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(batch / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize_output(values: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] in (np.float32, np.float16):
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale
