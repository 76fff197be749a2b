"""TensorFlow's and LiteRT's informational C++ log lines, dropped from stderr where they come.

Their libraries log while they load (cuFFT, cuDNN and cuBLAS "factories", the "computation
placer"), while the TFLite converter runs, and when a LiteRT interpreter sets up, before any
setting of theirs can stop them. Inside `native_logs_filtered()` stderr passes through a
filter that drops those lines only: warnings of Python's, errors and a crash's last words
still show. With EDGEFACTORY_DEBUG set (`--debug` sets it) nothing is filtered.
"""
import contextlib
import os
import re
import threading


def debug() -> bool:
    """Whether every log line should show (read when needed: `--debug` sets it after imports)."""
    return bool(os.environ.get("EDGEFACTORY_DEBUG"))


NATIVE_NOISE = re.compile(
    rb"^[WI]\d{4} [\d:.]+ +\d+ \S+:\d+\] "  # absl's warning and info lines: W0000 00:00:17... 8095 file.cc:177]
    rb"|Unable to register cu(FFT|DNN|BLAS) factory|All log messages before absl::InitializeLog\(\) is called"
    rb"|^INFO: Created TensorFlow Lite XNNPACK delegate|^fully_quantize: \d")  # the converter's own print


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


def native_logs_filtered():
    """The libraries' informational C++ log lines dropped from stderr for the block (not with
    EDGEFACTORY_DEBUG)."""
    return contextlib.nullcontext() if debug() else filtered_stderr(NATIVE_NOISE)
