"""`factory build --config`: options from a TOML recipe or an earlier build's manifest."""
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from factory.cli import app

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "recipe.toml"
NOT_IN_A_RECIPE = {"config", "quiet", "debug"}


def build(*args):
    result = CliRunner().invoke(app, ["build", *map(str, args)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    return result.exit_code, lines


def build_options() -> set[str]:
    command = next(c for c in app.registered_commands if c.callback.__name__ == "build")
    import inspect

    return set(inspect.signature(command.callback).parameters) - NOT_IN_A_RECIPE


def test_the_example_recipe_documents_every_option_and_loads(tmp_path):
    keys = set(re.findall(r"^#? ?([a-z0-9-]+) = ", EXAMPLE.read_text(), re.MULTILINE))
    assert {k.replace("-", "_") for k in keys} == build_options()
    foreign = tmp_path / "out"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, lines = build("--config", EXAMPLE, "--data", "digits", "--out", foreign)
    # every value in it made a valid build spec; the last check before any work refused --out (a flag: it won)
    assert code == 2 and lines == [f"error: --out {foreign} is not empty and holds no manifest.json; choose an "
                                   "empty or new folder"]


def test_a_recipe_gives_defaults_and_flags_win(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('data = "digits"\ninput-size = 7\n')
    assert build("--config", recipe, "--out", tmp_path / "out")[1] == [
        "error: --input-size 7 is out of range: use 32..1024 (e.g. 96 or 224)"]
    assert build("--config", recipe, "--out", tmp_path / "out", "--input-size", "8")[1] == [
        "error: --input-size 8 is out of range: use 32..1024 (e.g. 96 or 224)"]
    assert not (tmp_path / "out").exists()


MANIFEST_FIXED = json.dumps({"hyperparameters": {"data": "digits", "val_fraction": 0.3}})


@pytest.mark.parametrize("name, content, message", [
    ("r.toml", "[[[", "not valid TOML"),
    ("r.toml", 'data = "digits"\nspeed = "max"\n', "no option --speed"),
    ("r.toml", 'data = "digits"\nepochs = "many"\n', "epochs: "),
    ("r.toml", b"\xff\xfe\x00binary", "cannot read it"),
    ("r.toml", "# " + "x" * 1_100_000, "larger than 1,000,000 bytes"),
    ("m.json", "{not json", "not valid JSON"),
    ("m.json", "[1, 2]", "not a build manifest"),
    ("m.json", json.dumps({"hyperparameters": {"data": "digits", "epochs": [30]}}), "epochs: "),
    ("m.json", MANIFEST_FIXED, "the build used val_fraction 0.3, which no option sets"),
    ("missing.toml", None, "cannot read it"),
])
def test_a_bad_recipe_is_one_line_and_writes_nothing(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    code, lines = build("--config", path, "--out", tmp_path / "out")
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: --config {path}: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_pipe_or_device_is_never_read_as_a_recipe(tmp_path):
    import os

    fifo = tmp_path / "recipe.toml"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    for path in (fifo, "/dev/zero"):
        code, lines = build("--config", path, "--out", tmp_path / "out")
        assert code == 2 and lines == [f"error: --config {path}: not a regular file"]


@pytest.mark.parametrize("name, content, message", [
    ("deep.toml", "a = " + "[" * 5000 + "]" * 5000 + "\n", "not valid TOML"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ("twice.toml", 'data = "digits"\ninput-size = 64\ninput_size = 96\n', "an option is given twice"),
    ("m.json", json.dumps({"hyperparameters": {"data": "digits", "seed": 1, "split_seed": 2}}),
     "the build split with seed 2 and trained with 1"),
])
def test_nested_or_ambiguous_files_are_refused(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    code, lines = build("--config", path, "--out", tmp_path / "out")
    assert code == 2 and len(lines) == 1 and message in lines[0]


def test_a_replay_leaves_values_that_followed_a_default_to_follow_it(tmp_path):
    from factory import recipes

    recorded = {"data": "digits", "strategy": "fine-tune", "learning_rate": 0.001,
                "fine_tune_learning_rate": 0.0001, "augment": True, "seed": 0, "split_seed": 0}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"hyperparameters": recorded}))
    options = build_options()
    values = recipes.load(path, options)
    # --learning-rate 0.01 on the replay gives fine-tuning 0.001, as on a fresh build
    assert "fine_tune_learning_rate" not in values and "augment" not in values and values["strategy"] == "fine-tune"
    path.write_text(json.dumps({"hyperparameters": {**recorded, "fine_tune_learning_rate": 0.0005, "augment": False}}))
    values = recipes.load(path, options)
    assert values["fine_tune_learning_rate"] == 0.0005 and values["augment"] is False  # chosen, so replayed


def test_file_contents_in_an_error_are_shown_as_written(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("[/x],[bold]b\n1,2\n")  # rich markup in a header: text, not a style
    code, lines = build("--data", labels, "--out", tmp_path / "out")
    assert code == 2 and len(lines) == 1 and "['[/x]', '[bold]b']" in lines[0]
