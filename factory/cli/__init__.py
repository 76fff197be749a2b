"""The `factory` command line: training-side commands here, delivery in delivery.py."""
from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from factory.cli.common import app, console, size_text
from targets.errors import FactoryError


class Int8IO(str, Enum):
    uint8 = "uint8"
    int8 = "int8"


class Strategy(str, Enum):
    feature_extraction = "feature-extraction"
    fine_tune = "fine-tune"
    auto = "auto"


def _parse_unfreeze(value: str) -> int | None:
    if value == "all":
        return None
    if not value.isdigit():
        raise FactoryError(f"--unfreeze {value!r}: pass a number of layers or 'all'")
    return int(value)


def _fail(exc: FactoryError, debug: bool) -> None:
    if debug:
        raise exc
    Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def build(
    data: str = typer.Option(..., help="Folder with one sub-folder per class, or a named source: fashion-mnist, digits."),
    out: Path = typer.Option(..., help="Folder for the artifacts, labels.txt and manifest.json."),
    backbone: str = typer.Option("efficientnet_lite0", help="Registry name (see `factory backbones`) or hub:HANDLE_OR_DIR."),
    weights: Optional[Path] = typer.Option(None, help="Local weights file for keras.applications backbones."),
    input_size: Optional[int] = typer.Option(None, help="Square input size in pixels (default: the backbone's own)."),
    strategy: Strategy = typer.Option(
        Strategy.feature_extraction, help="Train only a new head, fine-tune the backbone's top too, or let the advisor choose."),
    unfreeze: str = typer.Option("20", help="fine-tune: number of top backbone layers to unfreeze, or 'all'."),
    unfreeze_blocks: Optional[int] = typer.Option(
        None, min=0, help="fine-tune: unfreeze the top K blocks (stem, block0..N, top) instead of --unfreeze layers."),
    gradual: bool = typer.Option(False, help="fine-tune: unfreeze one more block per stage while validation improves."),
    augment: Optional[bool] = typer.Option(None, help="Flip/crop/rotate training images while fine-tuning (default: on)."),
    class_weights: bool = typer.Option(True, help="Balanced class weights when classes are imbalanced."),
    cache: bool = typer.Option(True, help="Cache frozen-backbone features on disk ($EDGEFACTORY_CACHE)."),
    resume: bool = typer.Option(False, help="Continue an interrupted build from its last completed epoch."),
    target: List[str] = typer.Option(["tflite"], help="Deployment target: tflite, tfjs; repeat for several."),
    quantize: List[str] = typer.Option(
        [], help="tflite: float32, float16, dynamic, int8, qat; tfjs: float32, float16, uint8. Repeat for several "
        "(each goes to every target that offers it). Default: float32."),
    min_agreement: Optional[float] = typer.Option(
        None, min=0, max=1, help="Fail unless each artifact's top-1 agrees with Keras on this share of the test "
        "split (default: 0.99 float, 0.97 dynamic, 0.94 int8/qat/uint8)."),
    calibration_size: int = typer.Option(200, min=1, help="Training images used to calibrate int8."),
    int8_io: Int8IO = typer.Option(Int8IO.uint8, help="Input/output type of int8 and qat TFLite models."),
    qat_epochs: int = typer.Option(2, min=1, help="Epochs of quantization-aware training for --quantize qat."),
    latency_runs: int = typer.Option(30, min=0, help="Batch-1 timing runs per artifact in a fresh process (0: skip)."),
    publish: Optional[Path] = typer.Option(None, help="Publish the finished build into this store folder."),
    model_name: Optional[str] = typer.Option(None, help="Model name in the store (default: the --out folder's name)."),
    version: Optional[str] = typer.Option(None, help="Version in the store (default: the next number)."),
    epochs: int = typer.Option(30, min=1, help="Epochs for the head (early stopping may end sooner)."),
    fine_tune_epochs: int = typer.Option(5, min=1, help="Epochs for fine-tuning the unfrozen layers."),
    learning_rate: float = typer.Option(1e-3, min=0, help="Learning rate for the head."),
    fine_tune_learning_rate: Optional[float] = typer.Option(None, min=0, help="Learning rate for fine-tuning (default: learning rate / 10)."),
    batch_size: int = typer.Option(32, min=1),
    patience: int = typer.Option(5, min=1, help="Early stopping: epochs without validation-loss improvement."),
    limit: Optional[int] = typer.Option(None, min=2, help="Use a stratified subset of this many images (fast trials)."),
    seed: int = typer.Option(0, help="Seed for subsetting, splitting and training."),
    strict_data: bool = typer.Option(False, help="Fail on the first unreadable image instead of skipping it."),
    quiet: bool = typer.Option(False, help="No progress display."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Train a classifier on DATA by transfer learning and export verified artifacts to OUT."""
    try:
        from factory import build as build_lib
        from factory.progress import Reporter
        from factory.recipe import Recipe

        recipe = Recipe(
            data=data, out=str(out), backbone=backbone, weights=str(weights) if weights else None,
            input_size=input_size, strategy=strategy.value, unfreeze=_parse_unfreeze(unfreeze),
            unfreeze_blocks=unfreeze_blocks, gradual=gradual, augment=augment, class_weights=class_weights,
            cache=cache, resume=resume,
            epochs=epochs, fine_tune_epochs=fine_tune_epochs, learning_rate=learning_rate,
            fine_tune_learning_rate=fine_tune_learning_rate, batch_size=batch_size, patience=patience,
            limit=limit, seed=seed, strict_data=strict_data, targets=list(target), quantize=list(quantize),
            min_agreement=min_agreement, calibration_size=calibration_size, int8_io=int8_io.value,
            qat_epochs=qat_epochs, latency_runs=latency_runs, publish=str(publish) if publish else None,
            model_name=model_name, version=version,
        )
        with Reporter(enabled=not quiet) as reporter:
            result = build_lib.run(recipe, reporter)
    except FactoryError as exc:
        _fail(exc, debug)
    _print_summary(result.manifest, result.out)
    if result.release:
        console.print(f"published: {result.release}")


def _print_summary(manifest: dict, out: Path) -> None:
    metrics, strategy = manifest["metrics"], manifest["strategy"]
    table = Table(title=f"{manifest['backbone']['name']} / {strategy['name']} -> {out}")
    for column in ("model", "test accuracy", "agreement", "size", "latency p50", "time"):
        table.add_column(column, justify="left" if column == "model" else "right")
    keras_size = strategy["total_params"] * 4
    table.add_row(
        "keras", f"{metrics['keras_test_accuracy']:.4f}", "-", size_text(keras_size), "-", f"{metrics['train_seconds']:.1f}s train"
    )
    for a in manifest["artifacts"]:
        latency = f"{a['latency']['p50_ms']:.2f} ms" if a.get("latency") else "-"
        table.add_row(
            f"{a['target']} {a['quantize']}", f"{a['accuracy']:.4f}", f"{a['agreement']:.4f}",
            size_text(a["bytes"]), latency, f"{a['convert_seconds']:.1f}s convert",
        )
    console.print(table)
    console.print(
        f"trainable layers: {strategy['trainable_layers']}, trainable params: {strategy['trainable_params']:,}; "
        f"splits {manifest['data']['splits']}"
    )


def _unused_size(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f} MB" if num_bytes >= 1e6 else f"{num_bytes / 1e3:.1f} kB"


@app.command("backbones")
def list_backbones():
    """List the backbones this install can build on."""
    from factory import backbones

    for name in backbones.names():
        console.print(name)


def _load_for_probe(data: str, backbone: str, weights, input_size, limit, seed):
    from factory import backbones, classifier, data as data_lib

    chosen = backbones.resolve(backbone, input_size, str(weights) if weights else None)
    dataset = data_lib.load(data, chosen.input_size, limit=limit, seed=seed)
    return classifier.build(chosen, len(dataset.class_names)), dataset


@app.command()
def advise(
    data: str = typer.Option(..., help="Folder with one sub-folder per class, or a named source."),
    backbone: str = typer.Option("efficientnet_lite0", help="Registry name or hub:HANDLE_OR_DIR."),
    weights: Optional[Path] = typer.Option(None, help="Local weights file for keras.applications backbones."),
    input_size: Optional[int] = typer.Option(None, help="Square input size in pixels."),
    limit: Optional[int] = typer.Option(None, min=2, help="Use a stratified subset of this many images."),
    seed: int = typer.Option(0),
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Probe DATA with a linear head on frozen features and recommend a strategy, with the evidence."""
    try:
        from factory import advisor

        model, dataset = _load_for_probe(data, backbone, weights, input_size, limit, seed)
        advice = advisor.recommend(advisor.probe(model, dataset, seed=seed))
    except FactoryError as exc:
        _fail(exc, debug)
    evidence = advice.evidence
    console.print(f"learning curve (linear probe, validation accuracy): {evidence['learning_curve']}")
    console.print(f"images per class: min {evidence['images_per_class_min']}, "
                  f"median {evidence['images_per_class_median']:.0f}; classes {evidence['classes']}")
    blocks = f" --unfreeze-blocks {advice.unfreeze_blocks}" if advice.unfreeze_blocks else ""
    console.print(f"[bold]recommendation:[/] --strategy {advice.strategy}{blocks}")
    for reason in advice.reasons:
        console.print(f"  - {reason}")


@app.command()
def inspect(
    data: str = typer.Option(..., help="Folder with one sub-folder per class, or a named source."),
    backbone: str = typer.Option("efficientnet_lite0", help="Registry name or hub:HANDLE_OR_DIR."),
    weights: Optional[Path] = typer.Option(None, help="Local weights file for keras.applications backbones."),
    input_size: Optional[int] = typer.Option(None, help="Square input size in pixels."),
    unfreeze_blocks: int = typer.Option(3, min=0, help="Unfreeze the top K blocks before measuring."),
    limit: Optional[int] = typer.Option(None, min=2, help="Use a stratified subset of this many images."),
    batches: int = typer.Option(3, min=1, help="Batches to average the gradient norms over."),
    plot: Path = typer.Option(Path("gradient_flow.png"), help="Where to save the bar chart (PNG)."),
    seed: int = typer.Option(0),
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Print the gradient norm per block after training a head and unfreezing the top blocks."""
    try:
        from factory import inspect as inspect_lib
        from factory.classifier import unfreeze_top_blocks
        from factory.progress import Silent
        from factory.recipe import Recipe
        from factory.strategies import feature_extraction
        from factory.strategies.session import TrainingSession

        model, dataset = _load_for_probe(data, backbone, weights, input_size, limit, seed)
        recipe = Recipe(data=data, out="unused", seed=seed)
        feature_extraction.train(model, dataset, recipe, Silent(), TrainingSession(model.model))
        unfreeze_top_blocks(model, unfreeze_blocks)
        rows = inspect_lib.gradient_flow(model, dataset.train.images, dataset.train.labels, batches=batches)
    except FactoryError as exc:
        _fail(exc, debug)
    table = Table(title=f"gradient norm per block, top {unfreeze_blocks} blocks unfrozen (after head training)")
    for column in ("block", "trainable params", "gradient norm"):
        table.add_column(column, justify="left" if column == "block" else "right")
    for row in rows:
        norm = f"{row['grad_norm']:.3e}" if row["trainable_params"] else "frozen"
        table.add_row(row["group"], f"{row['trainable_params']:,}", norm)
    console.print(table)
    console.print(f"plot: {inspect_lib.plot(rows, plot, f'{backbone}: gradient flow, top {unfreeze_blocks} blocks unfrozen')}")


@app.command()
def bench(
    data: str = typer.Option(..., help="Folder with one sub-folder per class, or a named source: fashion-mnist, digits."),
    out: Optional[Path] = typer.Option(None, help="Run folder for results, plots and report (default: runs/bench-TIME)."),
    backbone: str = typer.Option("efficientnet_lite0", help="Registry name (see `factory backbones`) or hub:HANDLE_OR_DIR."),
    weights: Optional[Path] = typer.Option(None, help="Local weights file for keras.applications backbones."),
    input_size: Optional[int] = typer.Option(96, help="Square input size in pixels (96 keeps the grid quick; pass the size you deploy)."),
    limit: int = typer.Option(3000, min=0, help="Stratified subset of this many images (0: all of them)."),
    strategy: List[str] = typer.Option(
        ["feature-extraction", "fine-tune:2", "fine-tune:all"],
        help="Strategies to compare: feature-extraction, fine-tune:K (top K blocks), fine-tune:all. Repeat."),
    target: List[str] = typer.Option(["tflite", "tfjs"], help="Deployment targets: tflite, tfjs. Repeat."),
    quantize: List[str] = typer.Option(
        [], help="Quantizations, each on every target offering it (default: every tflite mode; tfjs float32 "
        "and uint8). Repeat."),
    epochs: int = typer.Option(15, min=1, help="Epochs for the head (and for the baseline recipe's fit)."),
    fine_tune_epochs: int = typer.Option(3, min=1, help="Epochs for fine-tuning the unfrozen layers."),
    learning_rate: float = typer.Option(1e-3, min=0, help="Learning rate for the head."),
    fine_tune_learning_rate: Optional[float] = typer.Option(None, min=0, help="Default: learning rate / 10."),
    batch_size: int = typer.Option(32, min=1),
    qat_epochs: int = typer.Option(1, min=1, help="Epochs of quantization-aware training for qat."),
    latency_runs: int = typer.Option(50, min=1, help="Batch-1 timing runs per artifact (fresh process)."),
    throughput_batch: int = typer.Option(32, min=1, help="Batch size for the throughput measurement."),
    throughput_runs: int = typer.Option(5, min=0, help="Timing runs at --throughput-batch (0: skip)."),
    baseline: bool = typer.Option(True, help="Also run the plain hub.KerasLayer recipe for comparison."),
    advisor: bool = typer.Option(True, help="Run the advisor and check its recommendation against the winner."),
    keep_artifacts: bool = typer.Option(False, help="Keep every artifact under RUN/artifacts (default: results only)."),
    budget_ms: Optional[float] = typer.Option(None, min=0, help="Pick the most accurate artifact with p50 <= this."),
    budget_kb: Optional[float] = typer.Option(None, min=0, help="Pick the most accurate artifact of at most this size."),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, help="No progress display."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Measure accuracy, latency, size and training cost for each strategy x target x quantization."""
    from datetime import datetime

    try:
        from factory.bench import grid
        from factory.progress import Reporter

        config = grid.BenchConfig(
            data=data, out=str(out or Path("runs") / datetime.now().strftime("bench-%Y%m%d-%H%M%S")),
            backbone=backbone, weights=str(weights) if weights else None, input_size=input_size,
            limit=limit or None, seed=seed, strategies=list(strategy), targets=list(target), quantize=list(quantize),
            epochs=epochs, fine_tune_epochs=fine_tune_epochs, learning_rate=learning_rate,
            fine_tune_learning_rate=fine_tune_learning_rate, batch_size=batch_size, qat_epochs=qat_epochs,
            latency_runs=latency_runs, throughput_batch=throughput_batch, throughput_runs=throughput_runs,
            baseline=baseline, advisor=advisor, keep_artifacts=keep_artifacts, budget_ms=budget_ms, budget_kb=budget_kb,
        )
        with Reporter(enabled=not quiet) as reporter:
            results = grid.run(config, reporter)
    except FactoryError as exc:
        _fail(exc, debug)
    _print_bench(results, Path(config.out))


def _print_bench(results: dict, run_folder: Path) -> None:
    from factory.bench import report

    table = Table(title=f"{results['config']['backbone']} on {results['data']['source']} "
                        f"({results['data']['splits']['test']} test images)")
    for column in report.ARTIFACT_HEADERS[:-1]:  # errors go below the table
        table.add_column(column, justify="left" if column in ("strategy", "target", "quantize") else "right",
                         no_wrap=column == "strategy")
    body, classes = report.artifact_table_rows(results)
    for cells, css in zip(body, classes):
        table.add_row(*cells[:-1], style={"failed": "red", "pareto": "bold green"}.get(css))
    console.print(table)
    for cells, css in zip(body, classes):
        if css == "failed":
            console.print(f"[red]failed:[/] {' '.join(cells[:3])}: {cells[-1]}", highlight=False)
    for line in report.summary_lines(results):
        console.print(f"- {line}", highlight=False)
    console.print(f"report: {run_folder / 'report.html'} (results.json, results.csv, plots beside it)")


@app.command()
def pick(
    run: Path = typer.Argument(..., help="A run folder written by `factory bench`."),
    budget_ms: Optional[float] = typer.Option(None, min=0, help="Latency budget: p50 at batch 1, in ms."),
    budget_kb: Optional[float] = typer.Option(None, min=0, help="Size budget in kB (1 kB = 1000 bytes)."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Print the most accurate artifact of a benchmark run within a latency and/or size budget."""
    from factory.bench import report, results as results_lib

    try:
        if budget_ms is None and budget_kb is None:
            raise FactoryError("pass --budget-ms and/or --budget-kb")
        results = results_lib.load(run)
        chosen = results_lib.pick(results["artifacts"], budget_ms, budget_kb)
        if chosen is None:
            raise FactoryError(report.describe_pick(None, budget_ms, budget_kb) + " in this run; raise the budget")
    except FactoryError as exc:
        _fail(exc, debug)
    console.print(report.describe_pick(chosen, budget_ms, budget_kb), highlight=False)


from factory.cli import delivery  # noqa: E402,F401  (registers its commands on `app`)


def main():  # console script entry point
    try:
        app()
    except KeyboardInterrupt:
        Console(stderr=True).print("[bold red]interrupted[/]")
        sys.exit(130)
