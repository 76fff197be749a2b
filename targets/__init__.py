"""Deployment targets, by the name used on the command line (`--target`)."""
from targets.tfjs import TFJSTarget
from targets.tflite import TFLiteTarget

REGISTRY = {
    "tflite": TFLiteTarget(),
    "tfjs": TFJSTarget(),
}
