import numpy as np
import pytest

from factory import data
from factory.specs import DataSpec
from targets.errors import FactoryError


def test_folder_source_decodes_every_format_to_rgb_at_input_size(image_folder):
    dataset = data.load(DataSpec(str(image_folder)), 32)
    assert dataset.class_names == ["blue", "red"]
    assert sum(dataset.sizes().values()) == 20
    for split in (dataset.train, dataset.val, dataset.test):
        images = split.load_images()
        assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8
    # red images are red, blue (some stored as grayscale) are not
    red = dataset.train.load_images()[dataset.train.labels == 1]
    assert red[..., 0].mean() > red[..., 2].mean() + 100


def test_split_is_stratified_disjoint_and_deterministic():
    a = data.load(DataSpec("digits", seed=3), 16)
    b = data.load(DataSpec("digits", seed=3), 16)
    c = data.load(DataSpec("digits", seed=4), 16)
    assert np.array_equal(a.test.load_images(), b.test.load_images())
    assert not np.array_equal(a.test.load_images(), c.test.load_images())
    assert a.sizes() == {"train": 1259, "validation": 179, "test": 359}
    for split in (a.train, a.val, a.test):
        counts = np.bincount(split.labels, minlength=10)
        assert counts.min() >= 0.8 * counts.max()


def test_limit_keeps_class_balance_of_fashion_mnist():
    dataset = data.load(DataSpec("fashion-mnist", limit=500), 32)
    assert sum(dataset.sizes().values()) == 500
    assert dataset.class_names[0] == "t-shirt_top" and len(dataset.class_names) == 10
    assert set(np.bincount(dataset.train.labels)) == {35}
    assert dataset.train.load_images().shape[1:] == (32, 32, 3)


def test_corrupt_image_is_skipped_and_reported(image_folder):
    bad = image_folder / "red" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    dataset = data.load(DataSpec(str(image_folder)), 32)
    assert sum(dataset.sizes().values()) == 20
    assert len(dataset.skipped) == 1 and "broken.jpg" in dataset.skipped[0]
    with pytest.raises(FactoryError, match="unreadable image .*broken.jpg"):
        data.load(DataSpec(str(image_folder), strict=True), 32)


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "no class sub-folders"),
        ({"cat": 4}, "only one class"),
        ({"cat": 4, "dog": 0}, "class folder .*dog has no images"),
        ({"cat": 4, "dog": 2}, "class 'dog' has 2 usable image"),
    ],
)
def test_bad_folders_are_named_in_the_error(tmp_path, layout, message):
    from conftest import write_image

    root = tmp_path / "d"
    root.mkdir()
    for name, count in layout.items():
        (root / name).mkdir()
        for i in range(count):
            write_image(root / name / f"{i}.png", (10, 10, 10))
    with pytest.raises(FactoryError, match=message):
        data.load(DataSpec(str(root)), 32)


def test_missing_folder_suggests_named_sources(tmp_path):
    with pytest.raises(FactoryError, match="no such folder and not a named source .*fashion-mnist"):
        data.load(DataSpec(str(tmp_path / "nope")), 32)
