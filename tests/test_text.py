"""Text classification: the MiniLM port and tokenizer against PyTorch's, text data sources and
their bad inputs, both strategies on real text, and the artifacts in their runtimes."""
import gzip
import json
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from factory import data, pipeline, text_data
from factory.backbones import minilm
from factory.specs import BackboneSpec, BuildSpec, CacheSpec, DataSpec, ExportSpec, TrainingSpec
from factory.tokenizer import WordPiece
from targets import registry, tflite_metadata
from targets.errors import FactoryError

REFERENCE = Path(__file__).parent / "reference" / "minilm_reference.json.gz"
FACTORY = [sys.executable, "-c", "from factory.cli import main; main()"]


@pytest.fixture(scope="module")
def reference():
    with gzip.open(REFERENCE, "rt", encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def encoder():
    from targets.tf_setup import keras

    ids = keras.Input((128,), dtype="int32")
    return keras.Model(ids, minilm.build(ids))


def test_port_matches_the_pytorch_model(reference, encoder):
    """Our graph's sentence embeddings equal sentence-transformers' (PyTorch) on the same weights,
    and paraphrases score higher than unrelated sentences."""
    assert "torch" in reference["made_with"] and "sentence_transformers" in reference["made_with"]
    tokenizer = WordPiece(minilm.model_dir(), reference["max_length"])
    ours = encoder.predict(tokenizer.encode(reference["sentences"]), verbose=0)
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    theirs = np.asarray(reference["embeddings"])
    assert np.abs(ours - theirs).max() < 1e-4
    similarity = dict(zip(reference["sentences"], ours @ ours.T))
    index = {s: i for i, s in enumerate(reference["sentences"])}
    eating, bread, baby = (index[s] for s in ("A man is eating food.", "A man is eating a piece of bread.",
                                               "The girl is carrying a baby."))
    password, login = index["How do I reset my password?"], index["I forgot my login credentials."]
    assert similarity["A man is eating food."][bread] > similarity["A man is eating food."][baby] + 0.3
    assert similarity["How do I reset my password?"][login] > similarity["How do I reset my password?"][eating] + 0.3


def test_tokenizer_matches_the_reference_bert_tokenizer(reference):
    """`tokenizers` (the factory's) and transformers' pure-Python BertTokenizer give the same ids on
    unicode, emoji, URLs, code, control characters, very long texts and real descriptions."""
    tokenizer = WordPiece(minilm.model_dir(), reference["max_length"])
    ours = tokenizer.encode(reference["texts"])
    assert len(reference["texts"]) > 250
    mismatched = [text[:40] for text, row, theirs in zip(reference["texts"], ours.tolist(), reference["ids"])
                  if row != theirs]
    assert mismatched == []
    assert ours.shape == (len(reference["texts"]), 128) and ours.dtype == np.int32
    contract = tokenizer.contract()
    assert (contract["cls_id"], contract["sep_id"], contract["pad_id"]) == (101, 102, 0)


def test_javascript_tokenizer_gives_the_same_ids(reference, tmp_path):
    """targets/js/wordpiece.mjs (what a browser page runs) against the reference, in Node."""
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(reference["texts"]))
    script = Path(__file__).parents[1] / "targets" / "js" / "wordpiece.mjs"
    result = subprocess.run(["node", str(script), str(minilm.model_dir() / "vocab.txt"),
                             str(reference["max_length"]), str(texts)], capture_output=True, text=True, check=True)
    ids = json.loads(result.stdout)
    assert [text[:40] for text, row, theirs in zip(reference["texts"], ids, reference["ids"]) if row != theirs] == []
    assert len(ids) == len(reference["texts"])


# --- data sources and their bad inputs -----------------------------------------------------------

def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def load(source, **options):
    return data.load(DataSpec(str(source), **options), 16, tokenizer=WordPiece(minilm.model_dir(), 16))


def test_a_folder_of_text_files_is_listed_and_bad_files_skipped(tmp_path):
    for label in ("spam", "ham"):
        for i in range(4):
            write(tmp_path / label / f"{i}.txt", f"{label} message number {i}")
    write(tmp_path / "spam" / "empty.txt", "  \n")
    write(tmp_path / "ham" / "latin1.txt", "caf\xe9 au lait".encode("latin-1"))
    write(tmp_path / "ham" / "huge.txt", b"a" * ((1 << 20) + 1))
    dataset = load(tmp_path)
    assert dataset.class_names == ["ham", "spam"]
    assert sum(dataset.sizes().values()) == 8
    reasons = sorted(line.split(": ", 1)[1] for line in dataset.skipped)
    assert reasons == ["empty text", "larger than 1 MiB", "not UTF-8 text (invalid continuation byte at byte 3)"]
    first = dataset.train.load_images([0])[0]
    assert first.dtype == np.int32 and first[0] == 101 and 102 in first
    with pytest.raises(FactoryError, match=r"huge.txt: larger than 1 MiB; fix it or remove it"):
        load(tmp_path, strict=True)  # the first bad file, in listing order


def test_a_class_folder_without_usable_texts_is_refused(tmp_path):
    for label in ("a", "b"):
        for i in range(3):
            write(tmp_path / label / f"{i}.txt", f"text {i} of {label}")
    write(tmp_path / "c" / "0.txt", b"\xff\xfe not utf-8")
    with pytest.raises(FactoryError, match="class 'c' has 0 usable text"):
        load(tmp_path)


def test_missing_sources_and_mixed_csv_files(tmp_path, image_folder):
    with pytest.raises(FactoryError, match="no such file"):
        data.check_source(DataSpec(str(tmp_path / "none.jsonl")), "efficientnet_lite0")
    with pytest.raises(FactoryError, match="no such folder"):
        data.check_source(DataSpec(str(tmp_path / "none")), "minilm_l6")
    captions = write(tmp_path / "captions.csv", "".join(
        f"{p.relative_to(tmp_path).as_posix()},{p.parent.name},a photo\n" for p in sorted(image_folder.rglob("*.*"))))
    captions.write_text("path,label,text\n" + captions.read_text())
    data.check_source(DataSpec(str(captions)), "efficientnet_lite0")  # image paths: an image dataset...
    assert load(captions).class_names == ["blue", "red"]  # ...and, with a text encoder, a text one


def test_a_text_file_among_images_does_not_make_them_text(image_folder):
    write(image_folder / "red" / "README.txt", "photos of red things")
    data.check_source(DataSpec(str(image_folder)), "efficientnet_lite0")
    with pytest.raises(FactoryError, match="holds no text"):
        data.check_source(DataSpec(str(image_folder)), "minilm_l6")


def test_csv_and_jsonl_sources_with_their_bad_rows(tmp_path):
    rows = "".join(f'"text {i}, with a comma",{"ab"[i % 2]}\n' for i in range(12))
    csv_file = write(tmp_path / "t.csv", 'body,topic\n' + rows + '"",a\n"no label",\n')
    dataset = load(csv_file, text_column="body", label_column="topic")
    assert dataset.class_names == ["a", "b"] and sum(dataset.sizes().values()) == 12
    assert [s.split(": ", 1)[1] for s in dataset.skipped] == ["empty text", "no label"]
    with pytest.raises(FactoryError, match="holds no text .* a .csv with a 'text' column"):
        load(csv_file)  # without its text column named, it reads as an image labels file

    lines = [json.dumps({"Text": f"line {i}", "label": i % 2}) for i in range(12)]  # keys: any case
    lines += ["{not json", "[1, 2]", json.dumps({"text": 5, "label": "a"}), json.dumps({"label": "a"}),
              '{"text": "lone \\ud800 surrogate", "label": "a"}', "[" * 100_000, '{"text": "x", "label": ' + "1" * 5000 + "}",
              json.dumps({"text": "x", "label": 1.5}), json.dumps({"text": "\u200b\u0000 \u200b", "label": "a"})]
    dataset = load(write(tmp_path / "t.jsonl", "\n".join(lines) + "\n"))
    assert dataset.class_names == ["0", "1"] and sum(dataset.sizes().values()) == 12
    assert [s.split(": ", 1)[1] for s in dataset.skipped] == [
        "not JSON (Expecting property name enclosed in double quotes)", "not a JSON object",
        "the text is not a string", "the text is not a string", "not valid Unicode (a lone surrogate)",
        "not JSON (nested too deeply)",
        "not JSON (Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits; "
        "use sys.set_int_max_str_digits() to increase the limit)",
        "the label is float, not a string or an integer", "empty text"]
    for name in ("long.csv", "long.jsonl"):  # one line over 1 MiB: one clear error, the file is not read whole
        with pytest.raises(FactoryError, match="a line longer than 1,048,576 characters"):
            load(write(tmp_path / name, "text,label\n" + "x" * (1 << 20) + ",a\n"))


def test_debian_summaries_are_the_same_packages_one_line_each():
    texts, labels, names, skipped = text_data.list_texts("debian-packages")
    summaries, summary_labels, summary_names, _ = text_data.list_texts("debian-summaries")
    assert len(texts) == 2566 and not skipped and summary_names == names and list(summary_labels) == list(labels)
    assert summaries[0] == "Plan 9 filesystem (v9fs) user mount utilities."
    assert all("\n" not in short and full.startswith(short + "\n") for short, full in zip(summaries, texts))
    with pytest.raises(FactoryError, match="holds text but the backbone reads images"):
        data.check_source(DataSpec("debian-summaries"), "efficientnet_lite0")


def test_text_for_an_image_backbone_and_the_reverse_are_refused(tmp_path):
    with pytest.raises(FactoryError, match="holds text but the backbone reads images"):
        data.check_source(DataSpec("debian-packages"), "efficientnet_lite0")
    with pytest.raises(FactoryError, match="holds no text .* but the backbone is a text encoder"):
        data.check_source(DataSpec("digits"), "minilm_l6")
    result = subprocess.run(FACTORY + ["build", "--data", "digits", "--backbone", "minilm_l6", "--out",
                                       str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode != 0 and result.stderr.count("\n") == 1 and "text encoder" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, message", [
    (lambda: dict(training=TrainingSpec(augment=True)), "--augment flips"),
    (lambda: dict(training=TrainingSpec(prune=0.5)), "a text encoder has none"),
    (lambda: dict(export=ExportSpec(quantize=("int16x8",))), "tflite int16x8 is not offered for a text encoder"),
    (lambda: dict(backbone=BackboneSpec("minilm_l6", 1024)), "out of range for a text encoder"),
])
def test_options_a_text_encoder_cannot_use_are_refused(tmp_path, options, message):
    with pytest.raises(FactoryError, match=message):
        BuildSpec(data=DataSpec("debian-packages"), out=tmp_path, **{"backbone": BackboneSpec("minilm_l6"), **options()})


# --- training and export on real text ------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared():
    return pipeline.prepare(DataSpec("debian-packages", limit=800), BackboneSpec("minilm_l6", 48))


def encoder_weights(model):
    return {w.name: w.numpy().copy() for w in model.weights if not w.name.startswith("factory_head")}


def test_feature_extraction_learns_the_sections_with_the_encoder_frozen(prepared, tmp_path):
    from factory.classifier import build

    before = encoder_weights(build(prepared.backbone, 10).model)
    trained = pipeline.train(prepared, TrainingSpec(epochs=40), cache=CacheSpec(folder=tmp_path))
    after = encoder_weights(trained.model)
    assert all(np.array_equal(before[name], after[name]) for name in before)
    majority = np.bincount(prepared.data.test.labels).max() / len(prepared.data.test)
    assert trained.test_accuracy > majority + 0.3  # 10 sections; the largest is 12% of the texts
    again = pipeline.train(prepared, TrainingSpec(epochs=40), cache=CacheSpec(folder=tmp_path))
    assert again.feature_cache["extracted"] == 0  # a second build reads the embeddings from the cache


@pytest.mark.slow
def test_fine_tuning_trains_the_top_transformer_layer_only(prepared, tmp_path):
    from factory.classifier import build

    before = encoder_weights(build(prepared.backbone, 10).model)
    spec = TrainingSpec(strategy="fine-tune", unfreeze_blocks=1, epochs=5, fine_tune_epochs=1)
    after = encoder_weights(pipeline.train(prepared, spec, cache=CacheSpec(folder=tmp_path)).model)
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert changed and all(name.startswith("block5_") for name in changed)
    assert {"block5_query/kernel:0", "block5_output/kernel:0", "block5_output_norm/gamma:0"} <= changed


@pytest.fixture(scope="module")
def summaries():  # on Intel AVX-512 CPUs oneDNN's rewrites give TF.js an op it lacks here (_MklLayerNorm)
    return pipeline.prepare(DataSpec("debian-summaries", limit=800), BackboneSpec("minilm_l6", 32))


@pytest.mark.slow
def test_tflite_and_tfjs_artifacts_agree_with_keras_in_their_runtimes(summaries, tmp_path):
    prepared = summaries
    trained = pipeline.train(prepared, TrainingSpec(epochs=20), cache=CacheSpec(folder=tmp_path / "cache"))
    spec = ExportSpec(targets=("tflite", "tfjs"), quantize=("dynamic", "float16"), latency_runs=2)
    reports = pipeline.export(trained, prepared, spec, tmp_path / "out")
    assert {r.name for r in reports} == {"tflite dynamic", "tflite float16", "tfjs float16"}
    for report in reports:  # float16 weights keep the model; int8 weights stay within their gate
        assert report.agreement >= (0.99 if report.mode.name == "float16" else 0.97)
        assert report.latency["p50_ms"] > 0
    tflite = next(r for r in reports if r.name == "tflite dynamic").artifact.path
    assert registry.get("tflite").describe(reports[0].artifact)["tensor_types"]["input"] == "int32"
    assert tflite_metadata.read_labels(tflite) == prepared.data.class_names
    with zipfile.ZipFile(tflite) as archive:
        assert archive.read("vocab.txt") == (minilm.model_dir() / "vocab.txt").read_bytes()
    assert b'"max_length": 32' in tflite_metadata.read_metadata(tflite)
    meta = json.loads((tmp_path / "out" / "tfjs_float16" / "model.json").read_text())["userDefinedMetadata"]
    assert meta["edgefactory"]["input"] == {"shape": [32], "dtype": "int32", "name": "input_ids"}
    assert meta["edgefactory"]["tokenizer"]["vocab_sha256"] == prepared.backbone.tokenizer.contract()["vocab_sha256"]


# --- the README's build, published and run in a real browser ------------------------------------

@pytest.fixture(scope="module")
def text_build(tmp_path_factory):
    """`factory build` on a subset of debian-packages with both targets (the README's command, smaller)."""
    out = tmp_path_factory.mktemp("text") / "sections"
    result = subprocess.run(FACTORY + ["build", "--quiet", "--data", "debian-packages", "--backbone", "minilm_l6",
                                       "--input-size", "64", "--limit", "1000", "--target", "tflite", "--target",
                                       "tfjs", "--quantize", "float16", "--latency-runs", "3", "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result.stdout


@pytest.mark.slow
def test_text_build_from_the_command_line(text_build):
    out, summary = text_build
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backbone"]["modality"] == "text" and manifest["backbone"]["tokenizer"]["max_length"] == 64
    assert f"accuracy on {manifest['data']['splits']['test']} test texts" in summary
    for artifact in manifest["artifacts"]:
        assert artifact["agreement"] >= 0.99 and artifact["latency"]["p50_ms"] > 0
        assert artifact["bytes"] == sum((out / f).stat().st_size for f in artifact["files"])
    tfjs = next(a for a in manifest["artifacts"] if a["target"] == "tfjs")
    assert "tfjs_float16/vocab.txt" in tfjs["files"]


@pytest.mark.slow
def test_browser_demo_classifies_typed_text(text_build, tmp_path):
    from playwright.sync_api import sync_playwright

    from factory import store
    from factory.server import serve

    out, _ = text_build
    store.publish(out, tmp_path / "store", "sections")
    server = serve(tmp_path / "store", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    text = ("A fast-paced arcade shooter: fly your spaceship through ten levels of enemies, collect "
            "power-ups and beat the high score. Multiplayer over the network.")
    from targets.tflite import run_interpreter  # what the app on a phone computes, for the same text

    probs = run_interpreter(out / "model_float16.tflite", WordPiece(minilm.model_dir(), 64).encode([text]))
    expected = (out / "labels.txt").read_text().split()[int(probs.argmax())]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_port}/demo/sections")
            page.wait_for_selector("#status[data-ready='1']", timeout=180_000)
            assert page.is_hidden("#drop") and page.is_visible("#text")
            page.fill("#text", text)
            page.click("#classifyText")
            page.wait_for_selector("#top1", timeout=120_000)
            shown, meta = page.get_attribute("#top1", "data-label"), page.inner_text("#meta")
            top3 = page.locator("#result li").count()
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert shown == expected and top3 == 3 and "inference" in meta and " ms on " in meta


@pytest.mark.slow
def test_bench_grid_on_text_with_the_tfidf_baseline(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(FACTORY + ["bench", "--quiet", "--data", "debian-packages", "--backbone", "minilm_l6",
                                       "--input-size", "32", "--limit", "400", "--strategy", "feature-extraction",
                                       "--target", "tflite", "--target", "tfjs", "--latency-runs", "2",
                                       "--throughput-runs", "0", "--no-advisor", "--out", str(run)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((run / "results.json").read_text())
    assert results["data"]["kind"] == "text" and results["baseline"]["strategy_label"].startswith("baseline: TF-IDF")
    assert results["baseline"]["keras_accuracy"] > 0.5  # word counts do separate Debian's sections
    modes = {(a["target"], a["quantize"]) for a in results["artifacts"]}
    assert ("tflite", "int16x8") not in modes and ("tflite", "mixed") not in modes and ("tflite", "dynamic") in modes
    assert all(a["status"] == "ok" for a in results["artifacts"])
    assert (run / "report.html").is_file() and "input 32 tokens" in (run / "report.html").read_text()
    assert "test texts" in result.stdout
