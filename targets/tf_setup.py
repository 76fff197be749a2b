"""The one place TensorFlow is imported: Keras 2 (tf_keras) must be chosen before that.

tensorflow-hub's KerasLayer and tensorflow-model-optimization work only with tf_keras, and
importing tfmot sets TF_USE_LEGACY_KERAS itself, which would change `tf.keras` mid-process.
Every module imports `tf` and `keras` from here, so the choice is made once, first.

A quiet start: unless EDGEFACTORY_DEBUG is set (`--debug` sets it), TensorFlow's C++ logging
is off (a failed cuInit on a machine without a GPU, among others), and what its libraries log
while they load is filtered (targets/native_logs.py).
"""
import os

from targets.native_logs import debug, native_logs_filtered

DEBUG = debug()
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if DEBUG else "3")
# tensorflowjs imports TF-DF, which prints an advert, or imports IPython when stdout is not a
# terminal (pytest, pipes) and fails without it.
os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")

with native_logs_filtered():
    import tensorflow as tf  # noqa: E402
    import tf_keras as keras  # noqa: E402

tf.get_logger().setLevel("ERROR")
if not DEBUG:
    import absl.logging  # noqa: E402  (Python-side absl: tensorflowjs' and SavedModel's warnings)

    absl.logging.set_verbosity(absl.logging.ERROR)

__all__ = ["tf", "keras"]
