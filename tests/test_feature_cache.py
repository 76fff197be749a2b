"""The per-image feature cache: only new or changed images are extracted, a crash keeps what was
committed, a killed build resumes extraction, features stream back with their labels, and
`factory cache info|prune` list and shrink it. Real EfficientNet-Lite0 weights throughout."""
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from factory import backbones, cache, classifier, data
from factory.cli import app
from factory.progress import Silent
from factory.specs import BackboneSpec, DataSpec
from targets.errors import FactoryError

SIZE = 32
FACTORY = [sys.executable, "-c", "from factory.cli import main; main()"]


@pytest.fixture(scope="module")
def lite0():
    return classifier.build(backbones.resolve(BackboneSpec(input_size=SIZE)), 2)


def extract_all(dataset, store) -> int:
    return sum(cache.extract(split, store, Silent(), description=name)
               for name, split in (("train", dataset.train), ("val", dataset.val), ("test", dataset.test)))


def test_only_new_and_changed_images_are_extracted(image_folder, lite0, tmp_path):
    from conftest import write_image

    with cache.open_store(lite0, tmp_path / "cache") as store:
        assert extract_all(data.load(DataSpec(str(image_folder)), SIZE), store) == 20
        assert extract_all(data.load(DataSpec(str(image_folder)), SIZE), store) == 0
        for i in range(3):
            write_image(image_folder / "red" / f"new{i}.png", (190, 40, 40))
        write_image(image_folder / "blue" / "b0.png", (90, 90, 250))  # same name, new pixels
        dataset = data.load(DataSpec(str(image_folder)), SIZE)
        assert extract_all(dataset, store) == 4
        # what the cache returns is what the backbone computes on the decoded image
        cached = store.vectors(dataset.test.keys)
        np.testing.assert_allclose(cached, lite0.features(dataset.test.load_images()), rtol=1e-4, atol=1e-4)

    other = classifier.build(backbones.resolve(BackboneSpec(input_size=SIZE)), 2)
    layer = other.model.get_layer("top_conv")
    layer.set_weights([w * 1.01 for w in layer.get_weights()])
    with cache.open_store(other, tmp_path / "cache") as changed_weights:
        assert changed_weights.extractor != store.extractor
        assert extract_all(dataset, changed_weights) == 23


def test_an_error_mid_extraction_keeps_every_finished_batch(lite0, tmp_path):
    digits = data.load(DataSpec("digits"), SIZE)
    distinct = len(set(digits.train.keys))
    with cache.open_store(lite0, tmp_path / "cache") as store:
        real, calls = store.feature_fn, []

        def fail_on_third_batch(images):
            calls.append(len(images))
            if len(calls) == 3:
                raise RuntimeError("out of memory")
            return real(images)

        store.feature_fn = fail_on_third_batch
        with pytest.raises(RuntimeError, match="out of memory"):
            cache.extract(digits.train, store, Silent(), description="train")
        assert len(store.cached(digits.train.keys)) == 2 * cache.EXTRACT_BATCH
        store.feature_fn = real
        assert cache.extract(digits.train, store, Silent(), description="train") == distinct - 2 * cache.EXTRACT_BATCH


def test_features_stream_back_in_a_shuffled_order_with_their_labels(lite0, tmp_path):
    digits = data.load(DataSpec("digits", limit=300), SIZE)
    with cache.open_store(lite0, tmp_path / "cache") as store:
        cache.extract(digits.train, store, Silent(), description="train")
        features = cache.write_split(digits.train, store, tmp_path / "train.f32", seed=0)
        expected = Counter((row.tobytes(), int(label))
                           for row, label in zip(store.vectors(digits.train.keys), digits.train.labels))
    streamed = Counter()
    for rows, labels in features.dataset(32, shuffle_seed=1):
        streamed.update((row.tobytes(), int(label)) for row, label in zip(rows.numpy(), labels.numpy()))
    assert streamed == expected
    assert not np.array_equal(features.labels, digits.train.labels)  # rows are not in split order


def test_listing_seventy_thousand_images_decodes_none_of_them():
    """The data stage keeps a list, not pixels: 70,000 images at 224 px would be 10.5 GB decoded."""
    script = ("import resource; from factory import data; from factory.specs import DataSpec; "
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
              "d = data.load(DataSpec('fashion-mnist'), 224); "
              "print(sum(d.sizes().values()), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    count, grown_kb = map(int, result.stdout.split())
    assert count == 70_000
    assert grown_kb < 400_000  # under 0.4 GB: the raw 28 px arrays, keys and lists


def test_killed_build_resumes_extraction_where_it_stopped(tmp_path):
    cache_dir = tmp_path / "cache"
    args = FACTORY + ["build", "--data", "digits", "--input-size", "160", "--epochs", "1", "--latency-runs", "0",
                      "--cache-dir", str(cache_dir), "--out", str(tmp_path / "b")]
    shard = cache_dir / "features" / (cache.LOCAL_SHARD + cache.SHARD_SUFFIX)
    process = subprocess.Popen(args, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    watchdog = threading.Timer(300, process.kill)
    watchdog.start()
    try:
        committed = 0
        while committed < 2 * cache.EXTRACT_BATCH:
            assert process.poll() is None, "the build ended before it could be killed"
            time.sleep(0.05)
            if shard.is_file():
                try:
                    with sqlite3.connect(shard) as db:
                        committed = db.execute("SELECT COUNT(*) FROM features").fetchone()[0]
                except sqlite3.OperationalError:
                    pass  # locked or not created yet
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        watchdog.cancel()
    with sqlite3.connect(shard) as db:
        kept = db.execute("SELECT COUNT(*) FROM features").fetchone()[0]
    assert 2 * cache.EXTRACT_BATCH <= kept < 1797 and not (tmp_path / "b").exists()  # a commit, not all

    resumed = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    note = re.search(r"([\d,]+) of ([\d,]+) images were cached, ([\d,]+) extracted", " ".join(resumed.stderr.split()))
    cached, total, extracted = (int(n.replace(",", "")) for n in note.groups())
    assert cached == kept and extracted == total - kept


def test_cache_info_lists_and_prune_shrinks(lite0, tmp_path):
    digits = data.load(DataSpec("digits", limit=200), SIZE)
    with cache.open_store(lite0, tmp_path / "features") as store:
        extract_all(digits, store)
    runner = CliRunner()
    shown = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "efficientnet_lite0" in shown.output and f"{SIZE} px" in shown.output and "200" in shown.output

    assert cache.prune(tmp_path / "features", unused_days=1)["removed_images"] == 0
    later = time.time() + 2 * 86400
    assert cache.prune(tmp_path / "features", unused_days=1, now=later)["removed_images"] == 200
    with cache.open_store(lite0, tmp_path / "features") as store:
        extract_all(digits, store)
        row_bytes = lite0.feature_model.output_shape[-1] * 4
    fit = runner.invoke(app, ["cache", "prune", "--cache-dir", str(tmp_path), "--max-size", f"{250 * row_bytes}B"])
    assert fit.exit_code == 0 and "removed 0 image(s)" in fit.output, fit.output
    small = runner.invoke(app, ["cache", "prune", "--cache-dir", str(tmp_path), "--max-size", f"{100 * row_bytes}B"])
    assert small.exit_code == 0 and "removed 100 image(s)" in small.output, small.output
    gone = runner.invoke(app, ["cache", "prune", "--cache-dir", str(tmp_path), "--all"])
    assert gone.exit_code == 0 and not list((tmp_path / "features").glob("*.sqlite"))


@pytest.mark.parametrize("args, message", [
    (["prune"], "say what to remove"),
    (["prune", "--max-size", "lots"], "give a size such as 500MB"),
    (["prune", "--max-size", "1e400"], "give a size such as 500MB"),
    (["prune", "--max-size", "0"], "give a size such as 500MB"),
    (["info"], "local.sqlite is damaged"),
    (["info"], "foreign.sqlite is damaged"),
])
def test_cache_commands_refuse_in_one_line(tmp_path, args, message):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "local.sqlite").write_bytes(b"this is not a database" * 100)
    if "foreign" in message:  # a real SQLite file, but not ours
        (tmp_path / "features" / "local.sqlite").unlink()
        with sqlite3.connect(tmp_path / "features" / "foreign.sqlite") as db:
            db.execute("CREATE TABLE features (something)")
    result = CliRunner().invoke(app, ["cache", *args, "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one (wrapped) line, no traceback



def test_an_image_changed_after_listing_is_refused_not_cached(image_folder):
    dataset = data.load(DataSpec(str(image_folder)), SIZE)
    path = dataset.test.items[0]
    Image.open(path).transpose(Image.FLIP_TOP_BOTTOM).save(path, format=Image.open(path).format)
    with pytest.raises(FactoryError, match="changed during the build"):
        dataset.test.load_images()


@pytest.mark.parametrize("config, message", [
    ("{not json", "TF_CONFIG is not"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "not in 0..1"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": true}}', "not in 0..1"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["c:3"]}, "task": {"type": "worker", "index": 0}}', "only a 'worker'"),
    ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}', "host:port"),
    ("[" * 100000 + "]" * 100000, "TF_CONFIG is not"),
])
def test_bad_tf_config_is_one_clear_error(config, message):
    from factory.distributed import parse_tf_config

    with pytest.raises(FactoryError, match=message):
        parse_tf_config(config)
