"""The one place TensorFlow is imported: Keras 2 (tf_keras) must be chosen before that.

tensorflow-hub's KerasLayer and tensorflow-model-optimization work only with tf_keras, and
importing tfmot sets TF_USE_LEGACY_KERAS itself, which would change `tf.keras` mid-process.
Every module imports `tf` and `keras` from here, so the choice is made once, first.

A quiet start: TensorFlow's C++ libraries log while they load (cuFFT, cuDNN and cuBLAS
"factories", the "computation placer", a failed cuInit on a machine without a GPU), before
any setting of theirs can stop them. Unless EDGEFACTORY_DEBUG is set (`--debug` sets it),
their C++ logging is off and what they write to stderr while loading is held back, and shown
only if the import fails.
"""
import contextlib
import os
import sys
import tempfile

DEBUG = bool(os.environ.get("EDGEFACTORY_DEBUG"))
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if DEBUG else "3")
# tensorflowjs imports TF-DF, which prints an advert, or imports IPython when stdout is not a
# terminal (pytest, pipes) and fails without it.
os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")


@contextlib.contextmanager
def held_stderr():
    """Send file descriptor 2 to a temporary file for the block; replay it if the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


with contextlib.nullcontext() if DEBUG else held_stderr():
    import tensorflow as tf  # noqa: E402
    import tf_keras as keras  # noqa: E402

tf.get_logger().setLevel("ERROR")

__all__ = ["tf", "keras"]
