"""The one place TensorFlow is imported: Keras 2 (tf_keras) must be chosen before that.

tensorflow-hub's KerasLayer and tensorflow-model-optimization work only with tf_keras, and
importing tfmot sets TF_USE_LEGACY_KERAS itself, which would change `tf.keras` mid-process.
Every module imports `tf` and `keras` from here, so the choice is made once, first.

A quiet start: TensorFlow's C++ libraries log while they load (cuFFT, cuDNN and cuBLAS
"factories", the "computation placer"), before any setting of theirs can stop them, and a
failed cuInit on a machine without a GPU later. Unless EDGEFACTORY_DEBUG is set (`--debug`
sets it), their C++ logging is off, and while they load, stderr passes through a filter that
drops those known lines only: anything else, a crash's last words included, still shows.
"""
import contextlib
import os
import re
import threading

DEBUG = bool(os.environ.get("EDGEFACTORY_DEBUG"))
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if DEBUG else "3")
# tensorflowjs imports TF-DF, which prints an advert, or imports IPython when stdout is not a
# terminal (pytest, pipes) and fails without it.
os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")

LOAD_NOISE = re.compile(rb"Unable to register cu(FFT|DNN|BLAS) factory|computation placer already registered|"
                        rb"All log messages before absl::InitializeLog\(\) is called")


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern):
    """Pass what is written to file descriptor 2 during the block on, less the lines `noise`
    matches; where the descriptors cannot be set up, leave stderr alone."""
    try:
        saved = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:
        yield
        return

    def forward():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not noise.search(line):
                    os.write(saved, line)

    forwarder = threading.Thread(target=forward, daemon=True)
    forwarder.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        os.dup2(saved, 2)  # the pipe's last writer gone: the forwarder reads to its end and stops
        forwarder.join()
        os.close(saved)


with contextlib.nullcontext() if DEBUG else filtered_stderr(LOAD_NOISE):
    import tensorflow as tf  # noqa: E402
    import tf_keras as keras  # noqa: E402

tf.get_logger().setLevel("ERROR")

__all__ = ["tf", "keras"]
