"""A build's options from a file: a TOML recipe, or the manifest.json of an earlier build.

A recipe names `factory build` options as keys (`input-size` or `input_size`), each with the
value the flag would take (lists for repeatable flags). A manifest's recorded settings replay
the build that wrote it: the same data, split, backbone and recipe, as resolved then
(`--strategy auto` replays the strategy the advisor chose); its --out, --resume and publish
settings are not replayed. Either way the file gives defaults: flags on the command line win.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from factory.specs import DataSpec, ExportSpec, TrainingSpec
from targets.errors import FactoryError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MAX_BYTES = 1_000_000
NOT_REPLAYED = {"out", "resume", "publish", "model_name", "version", "split_seed", "advisor_budget_s"}
RENAMED = {"targets": "target"}  # manifest key -> option
# Settings the manifest records that no flag sets: a replay must find this factory's defaults.
FIXED = {"val_fraction": DataSpec.val_fraction, "test_fraction": DataSpec.test_fraction,
         "dropout": TrainingSpec.dropout, "qat_learning_rate": ExportSpec.qat_learning_rate}


def load(path: Path, options: set[str]) -> dict:
    """Option name -> value from a recipe or manifest at `path`; `options` are the command's."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, a device or a pipe: never read
        raise FactoryError(f"--config {path}: not a regular file")
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise FactoryError(f"--config {path}: larger than {MAX_BYTES:,} bytes; not a recipe")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FactoryError(f"--config {path}: cannot read it ({exc.__class__.__name__})") from None
    if path.suffix == ".json":
        values = _from_manifest(path, text)
    else:
        try:
            table = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError) as exc:
            raise FactoryError(f"--config {path}: not valid TOML ({str(exc)[:200] or 'nested too deep'})") from None
        values = {key.replace("-", "_"): value for key, value in table.items()}
        if len(values) < len(table):
            raise FactoryError(f"--config {path}: an option is given twice (once with '-', once with '_')")
    unknown = sorted(set(values) - options)
    if unknown:
        raise FactoryError(f"--config {path}: no option --{unknown[0].replace('_', '-')}")
    return values


def _from_manifest(path: Path, text: str) -> dict:
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError):
        raise FactoryError(f"--config {path}: not valid JSON") from None
    recorded = manifest.get("hyperparameters") if isinstance(manifest, dict) else None
    if not isinstance(recorded, dict):
        raise FactoryError(f"--config {path}: not a build manifest (no hyperparameters)")
    for key, default in FIXED.items():
        if key in recorded and recorded[key] != default:
            raise FactoryError(f"--config {path}: the build used {key} {recorded[key]}, which no option sets "
                               f"(this factory uses {default}); it cannot be replayed")
    if recorded.get("split_seed", recorded.get("seed")) != recorded.get("seed"):
        raise FactoryError(f"--config {path}: the build split with seed {recorded['split_seed']} and trained with "
                           f"{recorded.get('seed')}; --seed sets both, so it cannot be replayed")
    values = {}
    for key, value in recorded.items():
        if key == "unfreeze":
            value = "all" if value is None else str(value)
        if key not in NOT_REPLAYED and key not in FIXED and value is not None:
            values[RENAMED.get(key, key)] = value
    _drop_resolved_defaults(values)
    return values


def _drop_resolved_defaults(values: dict) -> None:
    """The manifest records some values resolved from a default (the fine-tuning rate from the
    learning rate, augmentation from the strategy): where they equal that default, leave them to
    it, so a flag that changes what they follow acts as on a fresh build."""
    try:
        recipe = TrainingSpec(strategy=values.get("strategy", TrainingSpec.strategy),
                              learning_rate=values.get("learning_rate", TrainingSpec.learning_rate))
    except (FactoryError, TypeError, ValueError):
        return  # not values a build takes: their own checks refuse them
    if values.get("fine_tune_learning_rate") == recipe.backbone_learning_rate:
        del values["fine_tune_learning_rate"]
    if values.get("augment") == recipe.augments:
        del values["augment"]
