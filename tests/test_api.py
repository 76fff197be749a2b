"""The README's Python API example runs as written, and its stages do what they say."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_python_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_as_written(tmp_path):
    result = subprocess.run([sys.executable, "-c", readme_python_example()], cwd=tmp_path, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    accuracy = float(re.search(r"keras test accuracy ([\d.]+)", lines[0]).group(1))
    assert accuracy > 0.8  # digits, 10 classes: chance is 0.1
    reports = {line.split(":")[0]: line for line in lines[1:]}
    assert set(reports) == {"tflite float32", "tflite int8"}
    float32_agreement = float(re.search(r"agreement ([\d.]+)", reports["tflite float32"]).group(1))
    assert float32_agreement >= 0.99
    files = sorted(p.name for p in (tmp_path / "notebook-build").iterdir())
    assert files == ["model_float32.tflite", "model_int8.tflite"]
    assert (tmp_path / "notebook-build" / "model_int8.tflite").stat().st_size < \
        0.35 * (tmp_path / "notebook-build" / "model_float32.tflite").stat().st_size


def test_specs_refuse_bad_values_before_any_work():
    from factory.specs import BackboneSpec, DataSpec, ExportSpec, TrainingSpec
    from targets.errors import FactoryError

    for make, message in [
        (lambda: DataSpec("digits", limit=1), "--limit must be at least 2"),
        (lambda: BackboneSpec(input_size=8), "--input-size 8 is out of range"),
        (lambda: BackboneSpec("resnet9000"), "unknown backbone 'resnet9000'"),
        (lambda: TrainingSpec(strategy="magic"), "unknown strategy 'magic'"),
        (lambda: TrainingSpec(epochs=0), "--epochs 0 must be positive"),
        (lambda: ExportSpec(targets=("onnx",)), "unknown target 'onnx'"),
        (lambda: ExportSpec(quantize=("int4",)), "--quantize int4 is not offered"),
        (lambda: ExportSpec(targets=("tfjs",), quantize=("int8",)), "--quantize int8 is not offered"),
    ]:
        with pytest.raises(FactoryError, match=message):
            make()


def test_specs_and_cli_start_without_tensorflow():
    code = ("import sys; from factory import specs; import factory.cli; "
            "specs.ExportSpec(targets=('tflite', 'tfjs'), quantize=('int8',)); "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_mode_tables_drive_defaults_and_help():
    from typer.testing import CliRunner

    from factory.bench.config import BenchSpec
    from factory.cli import app
    from factory.specs import DataSpec, ExportSpec
    from targets import registry

    tflite, tfjs = registry.get("tflite"), registry.get("tfjs")
    assert [m.name for _, m in ExportSpec(targets=("tflite", "tfjs")).plan()] == ["float32", "float32"]
    bench = [(t.name, m.name) for t, m in BenchSpec(DataSpec("digits"), Path("run")).plan()]
    assert bench == ([("tflite", m.name) for m in tflite.modes if m.name != "smallest"]
                     + [("tfjs", "float32"), ("tfjs", "uint8"), ("tfjs", "mixed")])
    assert ExportSpec().threshold(tflite.mode("int8")) == 0.94
    assert ExportSpec(min_agreement=0.5).threshold(tflite.mode("int8")) == 0.5
    help_text = " ".join(CliRunner().invoke(app, ["build", "--help"], terminal_width=200).output.split())
    for mode in (*tflite.modes, *tfjs.modes):
        assert mode.name in help_text
    table = " ".join(CliRunner().invoke(app, ["targets"]).output.split())
    for mode in (*tflite.modes, *tfjs.modes):  # each row starts with the mode and its threshold
        assert f"│ {mode.name} │ {mode.min_agreement} │" in table
