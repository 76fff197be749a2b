"""`factory bench` (the strategy x target x quantization grid) and `factory pick`."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table
from rich.text import Text

from factory.backbones import DEFAULT_BACKBONE
from factory.bench.config import (BENCH_EXPORT, BENCH_INPUT_SIZE, BENCH_LIMIT, BENCH_TRAINING, DEFAULT_STRATEGIES,
                                  STRATEGY_HELP, BenchSpec)
from factory.cli.common import (BackboneOption, DataOption, Debug, LimitOption, Quiet, SeedOption, WeightsOption, app,
                                console, data_and_backbone, modes_help, one_line_errors)
from factory.specs import DEFAULT_SEED, DataSpec
from targets import registry
from targets.errors import FactoryError



@app.command()
@one_line_errors
def bench(
    data: DataOption,
    out: Optional[Path] = typer.Option(None, help="Run folder for results, plots and report (default: runs/bench-TIME)."),
    backbone: BackboneOption = DEFAULT_BACKBONE,
    weights: WeightsOption = None,
    input_size: Optional[int] = typer.Option(BENCH_INPUT_SIZE, help="Square input size in pixels, or tokens per "
                                             "text for a text encoder (small keeps the grid quick; pass the size "
                                             "you deploy)."),
    limit: LimitOption = BENCH_LIMIT,
    test_fraction: float = typer.Option(DataSpec.test_fraction, help="Share of the examples held out for testing "
                                        "(a larger test split measures agreement more finely)."),
    strategy: List[str] = typer.Option(list(DEFAULT_STRATEGIES), metavar="STRATEGY", help=f"Strategies to compare: {STRATEGY_HELP}. "
                                       "Repeat."),
    target: List[str] = typer.Option(list(BENCH_EXPORT.targets), metavar="TARGET", help="Deployment targets: "
                                     f"{', '.join(registry.names())}. Repeat."),
    quantize: List[str] = typer.Option(
        [], metavar="MODE", help="Quantizations, each on every target offering it (default: each target's bench modes: "
        f"{modes_help(bench=True)}). Repeat."),
    epochs: int = typer.Option(BENCH_TRAINING.epochs, help="Epochs for the head (and for the baseline recipe's fit)."),
    fine_tune_epochs: int = typer.Option(BENCH_TRAINING.fine_tune_epochs, help="Epochs for fine-tuning the "
                                         "unfrozen layers."),
    learning_rate: float = typer.Option(BENCH_TRAINING.learning_rate, help="Learning rate for the head."),
    fine_tune_learning_rate: Optional[float] = typer.Option(None, help="Learning rate for fine-tuning "
                                                            "(default: learning rate / 10)."),
    batch_size: int = typer.Option(BENCH_TRAINING.batch_size, help="Images per training step."),
    qat_epochs: int = typer.Option(BENCH_EXPORT.qat_epochs, help="Epochs of quantization-aware training for qat."),
    latency_runs: int = typer.Option(BENCH_EXPORT.latency_runs, help="Batch-1 timing runs per artifact (fresh "
                                     "process)."),
    throughput_batch: int = typer.Option(BenchSpec.throughput_batch, help="Batch size for the throughput "
                                         "measurement."),
    throughput_runs: int = typer.Option(BenchSpec.throughput_runs, help="Timing runs at --throughput-batch (0: skip)."),
    baseline: bool = typer.Option(BenchSpec.baseline, help="Also run the plain recipe for comparison (images: a "
                                  "frozen hub.KerasLayer fit; text: TF-IDF + logistic regression)."),
    advisor: bool = typer.Option(BenchSpec.advisor, help="Run the advisor and check its recommendation against "
                                 "the winner."),
    keep_artifacts: bool = typer.Option(False, help="Keep every artifact under RUN/artifacts (default: results "
                                        "only)."),
    budget_ms: Optional[float] = typer.Option(None, min=0, help="Pick the most accurate artifact with p50 <= this."),
    budget_kb: Optional[float] = typer.Option(None, min=0, help="Pick the most accurate artifact of at most this "
                                              "size."),
    seed: SeedOption = DEFAULT_SEED,
    quiet: Quiet = False,
    debug: Debug = False,
):
    """Measure accuracy, latency, size and training cost for each strategy x target x quantization."""
    from datetime import datetime

    data_spec, backbone_spec = data_and_backbone(data, backbone, weights, input_size, limit, seed,
                                                   test_fraction=test_fraction)
    training = dataclasses.replace(BENCH_TRAINING, epochs=epochs, fine_tune_epochs=fine_tune_epochs,
                                   learning_rate=learning_rate, fine_tune_learning_rate=fine_tune_learning_rate,
                                   batch_size=batch_size, seed=seed)
    spec = BenchSpec(
        data=data_spec, out=out or Path("runs") / datetime.now().strftime("bench-%Y%m%d-%H%M%S"),
        backbone=backbone_spec, training=training,
        strategies=tuple(strategy),
        export=dataclasses.replace(BENCH_EXPORT, targets=tuple(target), quantize=tuple(quantize),
                                   qat_epochs=qat_epochs, latency_runs=latency_runs),
        throughput_batch=throughput_batch, throughput_runs=throughput_runs, baseline=baseline, advisor=advisor,
        keep_artifacts=keep_artifacts, budget_ms=budget_ms, budget_kb=budget_kb,
    )
    from factory.bench import grid
    from factory.progress import Reporter

    with Reporter(enabled=not quiet) as reporter:
        results = grid.run(spec, reporter)
    _print_bench(results, Path(spec.out))


def _print_bench(results: dict, run_folder: Path) -> None:
    from factory.bench import report

    # 80 columns: the report and results.csv hold every column (p90, throughput, conversion time)
    examples = "texts" if results["data"].get("kind") == "text" else "images"
    table = Table(title=f"{results['config']['backbone']} on {results['data']['source']} "
                        f"({results['data']['splits']['test']:,} test {examples})", box=None, pad_edge=False)
    for column in ("strategy", "artifact", "accuracy", "agrees", "p50 ms", "MB", "Pareto"):
        table.add_column(column, justify="left" if column in ("strategy", "artifact") else "right", no_wrap=True)
    body, classes = report.artifact_table_rows(results)
    for cells, css in zip(body, classes):
        strategy, target, quantize, accuracy, agreement, p50, _, _, size, _, _, pareto, _ = cells
        agreement = agreement.replace(" (below gate)", "!")
        table.add_row(*map(Text, (strategy, f"{target} {quantize}", accuracy, agreement, p50, size, pareto)),
                      style={"failed": "red", "pareto": "bold green"}.get(css))
    console.print(table)
    console.print("! below its agreement gate; bold green: on the Pareto frontier", highlight=False)
    for cells, css in zip(body, classes):
        if css == "failed":
            console.print(Text("failed: ", style="red") + Text(f"{' '.join(cells[:3])}: {cells[-1]}"), highlight=False)
    for line in report.summary_lines(results):
        console.print(f"- {line}", highlight=False)
    console.print(f"report: {run_folder / 'report.html'} (results.json, results.csv, plots beside it)")


@app.command()
@one_line_errors
def pick(
    run: Path = typer.Argument(..., help="A run folder written by `factory bench`."),
    budget_ms: Optional[float] = typer.Option(None, min=0, help="Latency budget: p50 at batch 1, in ms."),
    budget_kb: Optional[float] = typer.Option(None, min=0, help="Size budget in kB (1 kB = 1000 bytes)."),
    debug: Debug = False,
):
    """Print the most accurate artifact of a benchmark run within a latency and/or size budget."""
    from factory.bench import report, results as results_lib

    if budget_ms is None and budget_kb is None:
        raise FactoryError("pass --budget-ms and/or --budget-kb")
    results = results_lib.load(run)
    chosen = results_lib.pick(results["artifacts"], budget_ms, budget_kb)
    if chosen is None:
        raise FactoryError(report.describe_pick(None, budget_ms, budget_kb) + " in this run; raise the budget")
    console.print(report.describe_pick(chosen, budget_ms, budget_kb), highlight=False)
