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
    code, lines = build("--config", EXAMPLE, "--data", tmp_path / "nothing", "--out", tmp_path / "out")
    assert code == 2 and lines == [f"error: --data {tmp_path / 'nothing'}: no such folder and not a named source "
                                   "(fashion-mnist, digits)"]  # every value in it converted; the flag won


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
