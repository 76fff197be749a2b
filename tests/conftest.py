import zlib

import numpy as np
import pytest
from PIL import Image

from targets.tf_setup import keras  # noqa: F401  (sets up Keras 2 before anything else)


@pytest.fixture(scope="session")
def fashion_small():
    """A real, small Fashion-MNIST split at 64 px: enough for above-chance tests in seconds."""
    from factory import data
    from factory.specs import DataSpec

    return data.load(DataSpec("fashion-mnist", limit=600), 64)


def write_image(path, color, size=(40, 30), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))  # the same pixels in every run
    pixels = np.clip(np.asarray(color) + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """Two classes of small real image files in every supported format."""
    root = tmp_path / "images"
    for i, ext in enumerate(["png", "jpg", "bmp", "gif", "jpeg"] * 2):
        write_image(root / "red" / f"r{i}.{ext}", (200, 30, 30))
        write_image(root / "blue" / f"b{i}.{ext}", (30, 30, 200), mode="L" if i % 2 else "RGB")
    return root
