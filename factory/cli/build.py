"""`factory build`, `backbones`, `targets`, `advise` and `inspect`: each composes the pipeline's stages."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from factory import preflight
from factory.backbones import DEFAULT_BACKBONE
from factory.cli.common import (BackboneOption, BudgetOption, DataOption, Debug, InputSizeOption, LabelColumnOption,
                                LimitOption, Quiet, SeedOption, TextColumnOption, WeightsOption, app, config_defaults,
                                console, data_and_backbone, grouped_help, modes_help, one_line_errors, size_text)
from factory.specs import DEFAULT_SEED, BuildSpec, CacheSpec, DataSpec, ExportSpec, TrainingSpec
from targets import registry
from targets.errors import FactoryError

TRAINING, EXPORT = TrainingSpec(), ExportSpec()  # the defaults the options show


def _thresholds_help() -> str:
    by_threshold: dict[float, list[str]] = {}
    for name in registry.names():
        for mode in registry.get(name).modes:
            by_threshold.setdefault(mode.min_agreement, [])
            if mode.name not in by_threshold[mode.min_agreement]:
                by_threshold[mode.min_agreement].append(mode.name)
    return ", ".join(f"{t} {'/'.join(names)}" for t, names in sorted(by_threshold.items(), reverse=True))


def _parse_unfreeze(value: str) -> int | None:
    if value == "all":
        return None
    if not value.isdigit():
        raise FactoryError(f"--unfreeze {value!r}: pass a number of layers or 'all'")
    return int(value)


BUILD_HELP_GROUPS = {
    "Recipe": ("config",),
    "Data": ("data", "text_column", "label_column", "limit", "seed", "strict_data", "cache", "cache_dir"),
    "Model": ("backbone", "weights", "input_size"),
    "Training": ("strategy", "unfreeze", "unfreeze_blocks", "gradual", "augment", "class_weights", "epochs",
                 "fine_tune_epochs", "learning_rate", "fine_tune_learning_rate", "batch_size", "patience",
                 "budget_s", "prune", "prune_epochs", "resume"),
    "Export": ("out", "target", "quantize", "min_agreement", "verify_images", "calibration_size", "int8_io",
               "qat_epochs", "latency_runs"),
    "Delivery": ("publish", "model_name", "version", "sign_key"),
}


@app.command(cls=grouped_help(BUILD_HELP_GROUPS))
@one_line_errors
def build(
    data: DataOption,
    config: Optional[Path] = typer.Option(
        None, metavar="FILE", is_eager=True, callback=config_defaults,
        help="Take options from a TOML recipe (keys: these options' names) or from an earlier build's "
        "manifest.json, which replays that build; options given on the command line win."),
    out: Path = typer.Option(..., help="Folder for the artifacts, labels.txt and manifest.json."),
    backbone: BackboneOption = DEFAULT_BACKBONE,
    weights: WeightsOption = None,
    input_size: InputSizeOption = None,
    strategy: str = typer.Option(TRAINING.strategy, help="feature-extraction (train a new head only), fine-tune "
                                 "(the backbone's top too) or auto (the advisor chooses)."),
    unfreeze: str = typer.Option(str(TRAINING.unfreeze), help="fine-tune: number of top backbone layers to "
                                 "unfreeze, or 'all'."),
    unfreeze_blocks: Optional[int] = typer.Option(
        None, help="fine-tune: unfreeze the top K blocks (stem, block0..N, top) instead of --unfreeze layers."),
    gradual: bool = typer.Option(TRAINING.gradual, help="fine-tune: unfreeze one more block per stage while "
                                 "validation improves."),
    augment: Optional[bool] = typer.Option(None, help="Flip/crop/rotate training images (default: on when "
                                           "fine-tuning)."),
    class_weights: bool = typer.Option(TRAINING.class_weights, help="Balanced class weights when classes are "
                                       "imbalanced."),
    cache: bool = typer.Option(CacheSpec.enabled, help="Cache frozen-backbone features on disk, per image."),
    cache_dir: Optional[Path] = typer.Option(None, help="The feature cache's folder (default: $EDGEFACTORY_CACHE, "
                                             "else ~/.cache/edgefactory); shared by the workers of a cluster."),
    resume: bool = typer.Option(BuildSpec.resume, help="Continue an interrupted build from its last completed epoch."),
    target: List[str] = typer.Option(list(EXPORT.targets), metavar="TARGET", help="Deployment target: "
                                     f"{', '.join(registry.names())}; repeat for several."),
    quantize: List[str] = typer.Option(
        [], metavar="MODE", help=f"{modes_help()}. Repeat for several (each goes to every target that offers it). "
        "Default: each target's first."),
    min_agreement: Optional[float] = typer.Option(
        None, help="Fail unless each artifact's top-1 agrees with Keras on this share of the test split "
        f"(default: {_thresholds_help()})."),
    calibration_size: int = typer.Option(EXPORT.calibration_size, help="Training images used to calibrate int8."),
    int8_io: str = typer.Option(EXPORT.int8_io, help="Input/output type of int8 and qat TFLite models: uint8, int8."),
    qat_epochs: int = typer.Option(EXPORT.qat_epochs, help="Epochs of quantization-aware training for --quantize qat."),
    latency_runs: int = typer.Option(EXPORT.latency_runs, help="Batch-1 timing runs per artifact in a fresh "
                                     "process (0: skip)."),
    verify_images: int = typer.Option(EXPORT.verify_images, help="Test images each artifact is checked on against "
                                      "Keras (a stratified sample of a larger test split)."),
    publish: Optional[Path] = typer.Option(None, help="Publish the finished build into this store folder."),
    model_name: Optional[str] = typer.Option(None, help="Model name in the store (default: the --out folder's name)."),
    version: Optional[str] = typer.Option(None, help="Version in the store (default: the next number)."),
    sign_key: Optional[Path] = typer.Option(None, help="Sign the published release with this Ed25519 private key "
                                            "(`factory keys new`)."),
    epochs: int = typer.Option(TRAINING.epochs, help="Epochs for the head (early stopping may end sooner)."),
    fine_tune_epochs: int = typer.Option(TRAINING.fine_tune_epochs, help="Epochs for fine-tuning the unfrozen layers."),
    learning_rate: float = typer.Option(TRAINING.learning_rate, help="Learning rate for the head."),
    fine_tune_learning_rate: Optional[float] = typer.Option(None, help="Learning rate for fine-tuning "
                                                            "(default: learning rate / 10)."),
    batch_size: int = typer.Option(TRAINING.batch_size, help="Images per training step."),
    patience: int = typer.Option(TRAINING.patience, help="Early stopping: epochs without validation-loss improvement."),
    budget_s: BudgetOption = None,
    prune: float = typer.Option(TRAINING.prune, metavar="SPARSITY", help="After training, zero this share (e.g. "
                                "0.5) of the backbone's convolution weights and train on: smaller gzip downloads "
                                "(0: off)."),
    prune_epochs: int = typer.Option(TRAINING.prune_epochs, help="Epochs of training while pruning."),
    limit: LimitOption = None,
    seed: SeedOption = DEFAULT_SEED,
    strict_data: bool = typer.Option(DataSpec.strict, help="Fail on the first unusable example (an unreadable "
                                     "image, an empty text, a row without a label) instead of skipping it."),
    text_column: TextColumnOption = DataSpec.text_column,
    label_column: LabelColumnOption = DataSpec.label_column,
    quiet: Quiet = False,
    debug: Debug = False,
):
    """Train a classifier on DATA by transfer learning and export verified artifacts to OUT."""
    from factory.specs import PublishSpec

    data_spec, backbone_spec = data_and_backbone(data, backbone, weights, input_size, limit, seed, strict=strict_data,
                                                 text_column=text_column, label_column=label_column)
    spec = BuildSpec(
        data=data_spec, out=out, backbone=backbone_spec,
        training=TrainingSpec(
            strategy=strategy, unfreeze=_parse_unfreeze(unfreeze), unfreeze_blocks=unfreeze_blocks, gradual=gradual,
            augment=augment, class_weights=class_weights, epochs=epochs, fine_tune_epochs=fine_tune_epochs,
            learning_rate=learning_rate, fine_tune_learning_rate=fine_tune_learning_rate, batch_size=batch_size,
            patience=patience, seed=seed, advisor_budget_s=budget_s, prune=prune, prune_epochs=prune_epochs),
        export=ExportSpec(
            targets=tuple(target), quantize=tuple(quantize), min_agreement=min_agreement,
            calibration_size=calibration_size, int8_io=int8_io, qat_epochs=qat_epochs, latency_runs=latency_runs,
            verify_images=verify_images),
        publish=PublishSpec(publish, model_name or out.resolve().name, version, sign_key) if publish else None,
        cache=CacheSpec(enabled=cache, folder=cache_dir),
        resume=resume,
    )
    preflight.check_build(spec)  # before TensorFlow is imported: a mistake is refused at once
    from factory import pipeline
    from factory.progress import Reporter

    with Reporter(enabled=not quiet) as reporter:
        result = pipeline.build(spec, reporter)
    if result is None:
        console.print("training done on this worker; the chief (worker 0) writes --out")
        return
    _print_summary(result.manifest, result.out)
    if result.release:
        console.print(f"published: {result.release}")


def _print_summary(manifest: dict, out: Path, console=console) -> None:
    """The build at a glance, in 80 columns: each model's test accuracy, agreement with Keras,
    size and gzip size, batch-1 latency and the time it took."""
    metrics, strategy = manifest["metrics"], manifest["strategy"]
    table = Table(title=f"{manifest['backbone']['name']} / {strategy['name']}")
    for column in ("model", "accuracy", "agree", "size", "gzip", "p50", "time"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    table.add_row("keras", f"{metrics['keras_test_accuracy']:.4f}", "-", size_text(strategy["total_params"] * 4),
                  "-", "-", f"{metrics['train_seconds']:.0f} s")
    for a in manifest["artifacts"]:
        latency = f"{a['latency']['p50_ms']:.2f} ms" if a.get("latency") else "-"
        table.add_row(f"{a['target']} {a['quantize']}", f"{a['accuracy']:.4f}", f"{a['agreement']:.4f}",
                      size_text(a["bytes"]), size_text(a["gzip_bytes"]), latency, f"{a['convert_seconds']:.0f} s")
    console.print(table)
    splits = manifest["data"]["splits"]
    verified = min(a.get("verified_images", splits["test"]) for a in manifest["artifacts"])
    examples = "texts" if manifest["backbone"].get("modality") == "text" else "images"
    lines = [
        f"accuracy on {splits['test']:,} test {examples}"
        + (f"; artifacts on a sample of {verified:,}" if verified < splits["test"] else ""),
        "agree: top-1 agreement with keras; gzip: the files gzip-compressed (a download)",
        "time: data and training for keras, conversion for each artifact",
        f"splits: {splits['train']:,} train, {splits['validation']:,} validation, {splits['test']:,} test",
        f"trained: {strategy['trainable_params']:,} parameters in {strategy['trainable_layers']} layer(s)",
    ]
    pruning = strategy.get("pruning")
    if pruning:
        lines.append(f"pruned: {pruning['sparsity']:.0%} zeros in {pruning['pruned_layers']} convolutions, "
                     f"{pruning['zero_share_of_model']:.0%} of the model's weights")
        before, after = pruning.get("val_accuracy_before"), pruning.get("val_accuracy_after")
        if before is not None and after is not None:
            lines.append(f"pruned: validation accuracy {before:.4f} before, {after:.4f} after "
                         f"({100 * (after - before):+.1f} points)")
    lines.append(f"written to {out}")
    for line in lines:
        console.print(line, highlight=False)


@app.command("backbones")
def list_backbones():
    """List the backbones this install can build on."""
    from factory import backbones

    for name in backbones.names():
        console.print(name)


@app.command("targets")
def list_targets():
    """List each target's quantization modes: what they store, the agreement they must reach."""
    for name in registry.names():
        table = Table(title=f"--target {name}")
        for column in ("--quantize", "min agreement", "in bench", "needs", "stores"):
            table.add_column(column)
        for mode in registry.get(name).modes:
            steps = ("calibration images" if mode.calibration else "", "validation images" if mode.search else "",
                     f"{mode.training} training" if mode.training else "")
            needs = ", ".join(step for step in steps if step)
            table.add_row(mode.name, f"{mode.min_agreement}", "yes" if mode.in_bench else "no", needs or "-",
                          mode.summary)
        console.print(table)


@app.command()
@one_line_errors
def advise(
    data: DataOption,
    backbone: BackboneOption = DEFAULT_BACKBONE,
    weights: WeightsOption = None,
    input_size: InputSizeOption = None,
    fine_tune_epochs: int = typer.Option(TRAINING.fine_tune_epochs, help="Epochs a full fine-tuning build would "
                                         "train (its cost is projected from them)."),
    budget_s: BudgetOption = None,
    limit: LimitOption = None,
    seed: SeedOption = DEFAULT_SEED,
    text_column: TextColumnOption = DataSpec.text_column,
    label_column: LabelColumnOption = DataSpec.label_column,
    quiet: Quiet = False,
    debug: Debug = False,
):
    """Race the candidate strategies on DATA (short, budgeted trials) and recommend one, with the evidence."""
    data_spec, backbone_spec = data_and_backbone(data, backbone, weights, input_size, limit, seed,
                                                 text_column=text_column, label_column=label_column)
    training = TrainingSpec(strategy="auto", fine_tune_epochs=fine_tune_epochs, seed=seed, advisor_budget_s=budget_s)
    from factory import advisor, pipeline
    from factory.progress import Reporter

    with Reporter(enabled=not quiet) as reporter:
        advice = pipeline.advise(pipeline.prepare(data_spec, backbone_spec, reporter), training, reporter=reporter)
    for line in advisor.table_lines(advice.evidence):
        console.print(line, highlight=False)
    console.print(f"[bold]recommendation:[/] {advice.flags()}")
    for reason in advice.reasons:
        console.print(f"  - {reason}", highlight=False)


@app.command()
@one_line_errors
def inspect(
    data: DataOption,
    backbone: BackboneOption = DEFAULT_BACKBONE,
    weights: WeightsOption = None,
    input_size: InputSizeOption = None,
    unfreeze_blocks: int = typer.Option(3, min=0, help="Unfreeze the top K blocks before measuring."),
    limit: LimitOption = None,
    batches: int = typer.Option(3, min=1, help="Batches to average the gradient norms over."),
    plot: Path = typer.Option(Path("gradient_flow.png"), help="Where to save the bar chart (PNG)."),
    seed: SeedOption = DEFAULT_SEED,
    text_column: TextColumnOption = DataSpec.text_column,
    label_column: LabelColumnOption = DataSpec.label_column,
    debug: Debug = False,
):
    """Print the gradient norm per block after training a head and unfreezing the top blocks."""
    data_spec, backbone_spec = data_and_backbone(data, backbone, weights, input_size, limit, seed,
                                                 text_column=text_column, label_column=label_column)
    from factory import gradient_flow, pipeline
    from factory.classifier import unfreeze_top_blocks

    prepared = pipeline.prepare(data_spec, backbone_spec)
    trained = pipeline.train(prepared, TrainingSpec(seed=seed))  # feature extraction: the head first
    unfreeze_top_blocks(trained.classifier, unfreeze_blocks)
    first = prepared.data.train.subset(range(min(len(prepared.data.train), batches * gradient_flow.BATCH_SIZE)))
    rows = gradient_flow.gradient_flow(trained.classifier, first.load_images(), first.labels, batches=batches)
    table = Table(title=f"gradient norm per block, top {unfreeze_blocks} blocks unfrozen (after head training)")
    for column in ("block", "trainable params", "gradient norm"):
        table.add_column(column, justify="left" if column == "block" else "right")
    for row in rows:
        norm = f"{row['grad_norm']:.3e}" if row["trainable_params"] else "frozen"
        table.add_row(row["group"], f"{row['trainable_params']:,}", norm)
    console.print(table)
    title = f"{backbone}: gradient flow, top {unfreeze_blocks} blocks unfrozen"
    console.print(f"plot: {gradient_flow.plot(rows, plot, title)}")
