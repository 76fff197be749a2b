"""TFLite model metadata: labels and input normalization packed into the .tflite file.

Writes the TFLite Metadata flatbuffer (schema identifier "M001", the format MediaPipe Tasks
and the TFLite Support library read) into the model's `metadata` list under the name
TFLITE_METADATA, and appends labels.txt as a zip archive after the flatbuffer, which is where
those readers look for associated files. Built with the `flatbuffers` package directly: the
libraries that ship a writer cannot be installed beside this TensorFlow (protobuf and absl pins).

Exported image models take RGB pixels in [0, 255] and normalize inside the graph, so the
metadata says mean 0, std 1: a reader must feed plain pixels. A text model takes int32 WordPiece
token ids: its input's description holds the tokenizer's contract (JSON) and vocab.txt is packed
beside labels.txt as the input's vocabulary.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import flatbuffers
import numpy as np

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
TFLITE_IDENTIFIER = b"TFL3"
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"

# Enum values and union tags of the metadata schema (metadata_schema.fbs).
_COLOR_RGB = 1
_CONTENT_FEATURE, _CONTENT_IMAGE = 1, 2
_PROCESS_NORMALIZATION = 1
_FILE_TENSOR_AXIS_LABELS, _FILE_VOCABULARY = 2, 5
VOCAB_FILE = "vocab.txt"


def _table(builder: flatbuffers.Builder, fields: list) -> int:
    """Write a table; `fields` are (slot, kind, value) with kind in uoffset/uint8/int8."""
    builder.StartObject(max(slot for slot, _, _ in fields) + 1)
    for slot, kind, value in fields:
        if kind == "uoffset":
            builder.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "uint8":
            builder.PrependUint8Slot(slot, value, 0)
        else:
            builder.PrependInt8Slot(slot, value, 0)
    return builder.EndObject()


def _vector(builder: flatbuffers.Builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _floats(builder: flatbuffers.Builder, values: list[float]) -> int:
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependFloat32(value)
    return builder.EndVector()


def _text_input(b: flatbuffers.Builder, contract: dict) -> int:
    """Token ids in, described by the tokenizer's contract, with its vocabulary attached."""
    vocab = _table(b, [
        (0, "uoffset", b.CreateString(VOCAB_FILE)),
        (1, "uoffset", b.CreateString("WordPiece vocabulary: token id = line number, from 0.")),
        (2, "int8", _FILE_VOCABULARY),
    ])
    b.StartObject(0)
    content = _table(b, [(0, "uint8", _CONTENT_FEATURE), (1, "uoffset", b.EndObject())])
    return _table(b, [
        (0, "uoffset", b.CreateString(contract["input"])),
        (1, "uoffset", b.CreateString(f"int32 WordPiece token ids, {contract['max_length']} per text, padded with "
                                      f"0; tokenizer: {json.dumps(contract, sort_keys=True)}")),
        (3, "uoffset", content),
        (6, "uoffset", _vector(b, [vocab])),
    ])


def build_metadata(name: str, description: str, input_size: int, num_classes: int,
                   text: dict | None = None) -> bytes:
    """The metadata flatbuffer; `text`: the tokenizer contract of a text model (else an image model)."""
    b = flatbuffers.Builder(1024)
    input_meta = _text_input(b, text) if text else _image_input(b, input_size)
    output_meta = _output(b, num_classes)
    subgraph = _table(b, [
        (2, "uoffset", _vector(b, [input_meta])),
        (3, "uoffset", _vector(b, [output_meta])),
    ])
    model = _table(b, [
        (0, "uoffset", b.CreateString(name)),
        (1, "uoffset", b.CreateString(description)),
        (3, "uoffset", _vector(b, [subgraph])),
        (4, "uoffset", b.CreateString("edgefactory")),
        (7, "uoffset", b.CreateString(MIN_PARSER_VERSION)),
    ])
    b.Finish(model, METADATA_IDENTIFIER)
    return bytes(b.Output())


def _image_input(b: flatbuffers.Builder, input_size: int) -> int:
    """An RGB image, plain pixels (normalization is inside the graph)."""
    image_props = _table(b, [(0, "int8", _COLOR_RGB)])
    input_content = _table(b, [(0, "uint8", _CONTENT_IMAGE), (1, "uoffset", image_props)])
    normalization = _table(b, [(0, "uoffset", _floats(b, [0.0])), (1, "uoffset", _floats(b, [1.0]))])
    process_unit = _table(b, [(0, "uint8", _PROCESS_NORMALIZATION), (1, "uoffset", normalization)])
    input_stats = _table(b, [(0, "uoffset", _floats(b, [255.0])), (1, "uoffset", _floats(b, [0.0]))])
    return _table(b, [
        (0, "uoffset", b.CreateString("image")),
        (1, "uoffset", b.CreateString(f"RGB image, {input_size}x{input_size}, pixels in [0, 255]")),
        (3, "uoffset", input_content),
        (4, "uoffset", _vector(b, [process_unit])),
        (5, "uoffset", input_stats),
    ])


def _output(b: flatbuffers.Builder, num_classes: int) -> int:
    """Class probabilities, labelled by labels.txt."""
    labels_file = _table(b, [
        (0, "uoffset", b.CreateString(LABELS_FILE)),
        (1, "uoffset", b.CreateString("Class labels, one per line, in output order.")),
        (2, "int8", _FILE_TENSOR_AXIS_LABELS),
    ])
    b.StartObject(0)  # FeatureProperties: a table without fields
    feature_props = b.EndObject()
    output_content = _table(b, [(0, "uint8", _CONTENT_FEATURE), (1, "uoffset", feature_props)])
    output_stats = _table(b, [(0, "uoffset", _floats(b, [1.0])), (1, "uoffset", _floats(b, [0.0]))])
    return _table(b, [
        (0, "uoffset", b.CreateString("probability")),
        (1, "uoffset", b.CreateString(f"Probabilities of the {num_classes} labels.")),
        (3, "uoffset", output_content),
        (5, "uoffset", output_stats),
        (6, "uoffset", _vector(b, [labels_file])),
    ])


def attach(path: Path, *, labels: list[str], name: str, description: str = "", text: dict | None = None,
           vocab_file: Path | None = None) -> None:
    """Write metadata and labels.txt into the .tflite file at `path` (in place); a text model's
    (`text`: its tokenizer contract) also gets `vocab_file` as vocab.txt."""
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
    input_size = int(model.subgraphs[0].tensors[model.subgraphs[0].inputs[0]].shape[1])
    kind = "text" if text else "image"
    metadata = build_metadata(name, description or f"{name}: {kind} classifier", input_size, len(labels), text)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    model.metadata.append(entry)
    builder = flatbuffers.Builder(path.stat().st_size + len(metadata) + 1024)
    builder.Finish(model.Pack(builder), TFLITE_IDENTIFIER)
    packed = io.BytesIO(bytes(builder.Output()))
    packed.seek(0, io.SEEK_END)
    with zipfile.ZipFile(packed, "a") as archive:  # appended after the flatbuffer
        archive.writestr(LABELS_FILE, "\n".join(labels) + "\n")
        if vocab_file:
            archive.write(vocab_file, VOCAB_FILE)
    path.write_bytes(packed.getvalue())


def read_labels(path: Path) -> list[str]:
    """The labels packed into a .tflite file by `attach`."""
    with zipfile.ZipFile(path) as archive:
        return archive.read(LABELS_FILE).decode().splitlines()


def read_metadata(path: Path) -> bytes:
    """The raw TFLITE_METADATA flatbuffer of a .tflite file."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_NAME:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    raise ValueError(f"{path} has no {METADATA_NAME}")
