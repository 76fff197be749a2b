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


def labels_file(tmp_path, image_folder, text: str, name: str = "labels.csv"):
    """A labels file in its own folder, naming `image_folder`'s images by relative path."""
    folder = tmp_path / "lists"
    folder.mkdir(exist_ok=True)
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text.format(images=f"../{image_folder.name}"), encoding="utf-8")
    return path


def rows(image_folder, prefix="{images}"):
    return "".join(f"{prefix}/{p.parent.name}/{p.name},{p.parent.name}\n"
                   for p in sorted(image_folder.rglob("*.*")))


@pytest.mark.parametrize("header", ["path,label\n", "image,choice\n", "\ufeffFilename,Class\n", ""])
def test_a_labels_file_is_a_source_like_a_folder(tmp_path, image_folder, header):
    path = labels_file(tmp_path, image_folder, header + rows(image_folder))
    listed = data.load(DataSpec(str(path)), 32)
    as_folder = data.load(DataSpec(str(image_folder)), 32)
    assert listed.class_names == as_folder.class_names == ["blue", "red"]
    assert listed.sizes() == as_folder.sizes() and not listed.skipped
    assert sorted(listed.train.keys) == sorted(as_folder.train.keys)  # the same images in the same split
    np.testing.assert_array_equal(listed.test.load_images(), as_folder.test.load_images())


def test_rows_without_a_usable_image_or_label_are_skipped_and_reported(tmp_path, image_folder):
    text = ("path,label\n" + rows(image_folder) + "{images}/red/gone.png,red\n" + "{images}/red,red\n"
            + "/dev/zero,blue\n" + "{images}/red/r0.png,\n" + ",blue\n" + "{images}/../images/red/r0.png,blue\n")
    path = labels_file(tmp_path, image_folder, text)
    listed = data.load(DataSpec(str(path)), 32)
    assert sum(listed.sizes().values()) == 20
    reasons = "\n".join(listed.skipped)
    assert len(listed.skipped) == 6 and "gone.png: missing" in reasons and "/dev/zero: not a regular file" in reasons
    assert "line 27: ../images/../images/red/r0.png is already listed on line " in reasons  # not twice, nor relabelled
    assert "line 25: no label" in reasons and "line 26: no image path" in reasons
    with pytest.raises(FactoryError, match="line 25: no label; fix the row or remove it"):
        data.load(DataSpec(str(path), strict=True), 32)


@pytest.mark.parametrize("text, message", [
    ("", "the labels file is empty"),
    ("name,size\na.png,3\n", "no path and label columns in its header"),
    ("path,label\n{images}/red/r0.png,red\n", r"1 label\(s\); a classifier needs at least two"),
    ("path,label\n{images}/red/r0.png,\"re\nd\"\n", "cannot be printed"),
    ("path,label\n{images}/red/r0.png,\"re\u2028d\"\n", "cannot be printed"),
    ("path,label\n{images}/red/r0.png,\0\n", "cannot be printed|not a readable labels file"),  # csv: 3.10 refuses NUL
    (b"path,label\n\xff\xfe.png,red\n", "not a readable labels file"),
])
def test_a_bad_labels_file_is_one_clear_error(tmp_path, image_folder, text, message):
    path = labels_file(tmp_path, image_folder, text)
    with pytest.raises(FactoryError, match=message):
        data.load(DataSpec(str(path)), 32)


def test_a_labels_file_is_checked_before_any_work(tmp_path, image_folder):
    with pytest.raises(FactoryError, match="no such file"):
        data.check_source(DataSpec(str(tmp_path / "none.csv")), "efficientnet_lite0")
    with pytest.raises(FactoryError, match="no path and label columns"):
        data.check_source(DataSpec(str(labels_file(tmp_path, image_folder, "a,b,c\n"))), "efficientnet_lite0")
    path = labels_file(tmp_path, image_folder, (tmp_path / "x").as_posix() + ".bin\n")
    with pytest.raises(FactoryError, match="give two columns without a header"):
        data.check_source(DataSpec(str(path)), "efficientnet_lite0")
