"""The one place TensorFlow is imported: Keras 2 (tf_keras) must be chosen before that.

tensorflow-hub's KerasLayer and tensorflow-model-optimization work only with tf_keras, and
importing tfmot sets TF_USE_LEGACY_KERAS itself, which would change `tf.keras` mid-process.
Every module imports `tf` and `keras` from here, so the choice is made once, first.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tensorflowjs imports TF-DF, which prints an advert, or imports IPython when stdout is not a
# terminal (pytest, pipes) and fails without it.
os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

tf.get_logger().setLevel("ERROR")

__all__ = ["tf", "keras"]
