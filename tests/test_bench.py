"""The benchmark suite: a real small grid on digits, its files, and the logic that reads them."""
import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from factory.bench import grid, isolated, report, results as results_lib
from factory.bench.config import BenchSpec, StrategyCell
from factory.specs import DataSpec
from targets.base import Mode
from factory.cli import app
from targets.errors import FactoryError


def one_line_error(result, message: str):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output, result.output


def train_or_get_killed(data, backbone, training, cache, weights_path, reporter):
    """Stands in for isolated.train_strategy: a full fine-tune is killed, as by the OOM killer."""
    if training.strategy == "fine-tune" and training.unfreeze is None and training.unfreeze_blocks is None:
        os.kill(os.getpid(), signal.SIGKILL)
    return isolated.train_strategy(data, backbone, training, cache, weights_path, reporter=reporter)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """FE, fine-tune top 1 block, and a full fine-tune whose training process gets killed."""
    run = tmp_path_factory.mktemp("bench") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(isolated, "train_strategy", train_or_get_killed)
        result = CliRunner().invoke(app, [
            "bench", "--quiet", "--data", "digits", "--input-size", "48", "--limit", "0", "--out", str(run),
            "--strategy", "feature-extraction", "--strategy", "fine-tune:1", "--strategy", "fine-tune:all",
            "--target", "tflite", "--target", "tfjs", "--quantize", "float32", "--quantize", "int8",
            "--epochs", "8", "--fine-tune-epochs", "1", "--latency-runs", "10", "--throughput-runs", "2",
            "--throughput-batch", "8", "--budget-kb", "5000",
        ])
    assert result.exit_code == 0, result.output
    return run, json.loads((run / "results.json").read_text()), result.output


def test_every_cell_is_measured_and_the_failed_one_recorded(bench_run):
    _, results, output = bench_run
    assert results["complete"]
    by_strategy = {s["strategy"]: s for s in results["strategies"]}
    assert by_strategy["feature-extraction"]["status"] == by_strategy["fine-tune:1"]["status"] == "ok"
    failed = by_strategy["fine-tune:all"]
    assert failed["status"] == "failed" and "the process died (exit code -9" in failed["error"]
    cells = {(a["strategy"], a["target"], a["quantize"]): a for a in results["artifacts"]}
    assert set(cells) == {(s, t, q) for s in by_strategy for t, q in
                          [("tflite", "float32"), ("tflite", "int8"), ("tfjs", "float32")]}
    assert all(cells["fine-tune:all", t, q]["status"] == "failed" for t, q in
               [("tflite", "float32"), ("tflite", "int8"), ("tfjs", "float32")])
    assert "failed: fine-tune:all" in output

    for strategy in ("feature-extraction", "fine-tune:1"):
        trained = by_strategy[strategy]
        assert trained["keras_accuracy"] > 0.5  # 10 classes: chance is 0.1
        assert trained["train_seconds"] > 0 and trained["peak_rss_mb"] >= trained["rss_before_mb"] > 0
        float32, int8, tfjs = (cells[strategy, t, q] for t, q in [("tflite", "float32"), ("tflite", "int8"),
                                                                  ("tfjs", "float32")])
        for artifact in (float32, int8, tfjs):
            assert artifact["status"] == "ok"
            assert artifact["latency"]["p50_ms"] > 0 and artifact["latency"]["threads"] >= 1
            assert artifact["throughput"]["batch"] == 8 and artifact["convert_seconds"] > 0
        assert float32["agreement"] >= 0.99 and tfjs["agreement"] >= 0.99
        assert abs(float32["accuracy"] - trained["keras_accuracy"]) < 0.01
        assert int8["bytes"] < 0.35 * float32["bytes"] and int8["accuracy"] > 0.5
        assert float32["latency"]["runtime"] == "litert" and tfjs["latency"]["backend"] == "wasm"
    assert by_strategy["fine-tune:1"]["trainable_params"] > by_strategy["feature-extraction"]["trainable_params"]


def test_baseline_runs_side_by_side_and_ratios_are_recorded(bench_run):
    _, results, output = bench_run
    base = results["baseline"]
    assert base["status"] == "ok" and base["keras_accuracy"] > 0.5 and base["agreement"] >= 0.99
    fe = next(s for s in results["strategies"] if s["strategy"] == "feature-extraction")
    ratios = results["ratios"]
    assert ratios["fe_training_speedup_vs_baseline"] == pytest.approx(base["train_seconds"] / fe["train_seconds"], rel=0.01)
    # the point of the feature cache, measured side by side in this run: a second build is faster than the
    # baseline recipe, which runs the frozen backbone on every image in every epoch
    assert fe["warm_cache_train_seconds"] < base["train_seconds"]
    assert 0 < fe["warm_cache_train_seconds"] and "fe_warm_cache_training_speedup_vs_baseline" in ratios
    assert 0 < ratios["int8_size_vs_float32"] < 0.35 and ratios["int8_latency_vs_float32"] > 0
    assert "faster than the baseline recipe" in output


def test_advisor_verdict_is_checked_against_the_winner(bench_run):
    run, results, output = bench_run
    trained = [s for s in results["strategies"] if s["status"] == "ok"]
    assert results["measured_winner"] == max(trained, key=lambda s: s["keras_accuracy"])["strategy"]
    with open(run / "results.csv") as f:  # the winner again, from the CSV's per-artifact accuracies
        accuracy = {r["strategy"]: float(r["keras_accuracy"]) for r in csv.DictReader(f)
                    if r["status"] == "ok" and r["strategy"] != "baseline"}
    assert results["measured_winner"] == max(accuracy, key=accuracy.get)
    family = "feature-extraction" if results["measured_winner"] == "feature-extraction" else "fine-tune"
    advice = results["advice"]
    candidates = advice["evidence"]["candidates"]
    picked = [c["name"] for c in candidates if c["picked"]]
    assert len(candidates) == 4 and len(picked) == 1
    assert advice["strategy"] == ("feature-extraction" if picked == ["feature-extraction"] else "fine-tune")
    tied = {"feature-extraction" if c["name"] == "feature-extraction" else "fine-tune" for c in candidates if c["tied"]}
    assert results["advisor_matches"] == (advice["strategy"] == family or family in tied)
    assert f"Advisor's race picked {picked[0]}" in output
    assert "The advisor's race" in (run / "report.html").read_text()


def test_csv_plots_and_html_report(bench_run):
    run, results, _ = bench_run
    with open(run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == report.CSV_COLUMNS
    assert len(rows) == len(results["artifacts"]) + 1  # + the baseline
    assert {r["strategy"] for r in rows} == {"feature-extraction", "fine-tune:1", "fine-tune:all", "baseline"}
    for name in report.PLOTS.values():
        png = (run / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a drawn figure, not an empty canvas
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # self-contained
    assert results["machine"]["cpu"] in page and results["versions"]["tensorflow"] in page
    assert "race picked" in page and "the process died" in page and "Pareto" in page


def test_pareto_rows_are_not_dominated(bench_run):
    _, results, _ = bench_run
    measured = results_lib.ok(results["artifacts"])
    frontier = [r for r in measured if r["pareto"]]
    assert frontier
    for row in measured:
        dominated = any(results_lib.p50(o) <= results_lib.p50(row) and o["accuracy"] >= row["accuracy"]
                        and (results_lib.p50(o), o["accuracy"]) != (results_lib.p50(row), row["accuracy"])
                        for o in measured)
        assert row["pareto"] == (not dominated)


def test_budget_pick_from_a_finished_run(bench_run):
    run, results, _ = bench_run
    measured = results_lib.ok(results["artifacts"])
    budget = float(np.median([results_lib.p50(r) for r in measured]))
    expected = max((r for r in measured if results_lib.p50(r) <= budget), key=lambda r: r["accuracy"])
    result = CliRunner().invoke(app, ["pick", str(run), "--budget-ms", str(budget)])
    assert result.exit_code == 0, result.output
    assert f"{expected['target']} {expected['quantize']}" in result.output
    assert f"{expected['accuracy']:.4f}" in result.output
    # the run's own --budget-kb 5000: only int8 files (about 4 MB) fit
    picked = results_lib.find(results["artifacts"], results["budget"]["pick"])
    assert picked["quantize"] == "int8" and picked["bytes"] <= 5_000_000

    one_line_error(CliRunner().invoke(app, ["pick", str(run), "--budget-ms", "0.0001"]), "no artifact fits p50 <= 0.0001 ms")


def test_pick_and_budget_logic():
    def row(name, accuracy, ms, size, status="ok"):
        return {"strategy": name, "target": "tflite", "quantize": "x", "status": status, "accuracy": accuracy,
                "latency": {"p50_ms": ms}, "bytes": size}

    rows = [row("a", 0.80, 1.0, 4_000_000), row("b", 0.85, 2.0, 13_000_000), row("c", 0.84, 3.0, 4_000_000),
            row("d", 0.99, 0.5, 1, status="failed")]
    assert [r["strategy"] for r in results_lib.pareto(rows)] == ["a", "b"]
    assert results_lib.pick(rows, 1.5, None)["strategy"] == "a"
    assert results_lib.pick(rows, None, 5000)["strategy"] == "c"
    assert results_lib.pick(rows, None, None)["strategy"] == "b"
    assert results_lib.pick(rows, 0.1, None) is None
    below_gate = {**row("e", 0.95, 0.6, 1000), "passes_gate": False}  # not the model that was evaluated
    assert results_lib.pick(rows + [below_gate], 1.5, None)["strategy"] == "a"


def test_a_strategy_cell_may_be_pruned():
    cell = StrategyCell.parse("fine-tune:all+prune:0.5")
    assert cell.training.strategy == "fine-tune" and cell.training.unfreeze is None and cell.training.prune == 0.5
    assert cell.label == "full fine-tune, pruned 50%" and cell.slug == "fine-tune-all-prune-0.5"
    assert StrategyCell.parse("fine-tune:all").training.prune == 0
    for bad in ("feature-extraction+prune:half", "fine-tune:2+prune:1", "fine-tune:2+prune:0", "fine-tune:2+prune:nan"):
        with pytest.raises(FactoryError, match=r"\+prune:S takes a sparsity in \(0, 1\)"):
            StrategyCell.parse(bad)


def test_a_failing_artifact_is_recorded_and_the_grid_goes_on():
    from types import SimpleNamespace

    from factory.progress import Silent

    class BrokenTarget:
        name = "tflite"

        def convert(self, *args):
            raise RuntimeError("converter crashed")

    cell = StrategyCell.parse("feature-extraction")
    trained = grid.TrainedCell({"strategy": cell.name}, trained=SimpleNamespace(model=None))
    spec = BenchSpec(DataSpec("digits"), Path("unused"))
    row = grid._measure_artifact(cell, trained, BrokenTarget(), Mode("float16", 0.99, ""), context=None,
                                 out_dir=None, prepared=SimpleNamespace(data=None), spec=spec, reporter=Silent())
    assert row["status"] == "failed" and row["error"] == "RuntimeError: converter crashed"


@pytest.mark.parametrize("spec", ["fine-tune", "fine-tune:0", "fine-tune:some", "linear-probe",
                                  "prune:0.5+feature-extraction"])
def test_bad_strategy_spec_is_one_line(tmp_path, spec):
    with pytest.raises(FactoryError, match="feature-extraction, fine-tune:K"):
        StrategyCell.parse(spec)
    out = tmp_path / "run"
    one_line_error(CliRunner().invoke(app, ["bench", "--quiet", "--data", "digits", "--out", str(out),
                                            "--strategy", spec]), f"--strategy {spec!r}")
    assert not out.exists()


def test_bench_refuses_a_used_run_folder_and_pick_needs_results(tmp_path):
    (tmp_path / "old.txt").write_text("keep me")
    one_line_error(CliRunner().invoke(app, ["bench", "--quiet", "--data", "digits", "--out", str(tmp_path)]),
                   "already exists and is not empty")
    assert (tmp_path / "old.txt").read_text() == "keep me"
    one_line_error(CliRunner().invoke(app, ["pick", str(tmp_path), "--budget-ms", "1"]), "no results.json")
    one_line_error(CliRunner().invoke(app, ["pick", str(tmp_path)]), "pass --budget-ms and/or --budget-kb")


def crowded_results(budget: dict | None = None) -> dict:
    """A grid's results where 21 artifacts sit almost on one point, as int8 files of close
    strategies do: every label must still be readable."""
    strategies = [{"strategy": s, "strategy_label": s, "status": "ok", "train_seconds": 10 + i * 0.01,
                   "keras_accuracy": 0.9} for i, s in enumerate(["feature-extraction", "fine-tune:2", "fine-tune:all"])]
    artifacts = [{"strategy": s["strategy"], "strategy_label": s["strategy"], "target": target, "quantize": mode,
                  "status": "ok", "accuracy": 0.9 + 0.0001 * i, "passes_gate": mode != "int8", "pareto": False,
                  "latency": {"p50_ms": 1.0 + 0.001 * i}, "bytes": (4 if mode == "float32" else 1) * 10**6 + i}
                 for i, (s, (target, mode)) in enumerate(
                     (s, tm) for s in strategies for tm in [("tflite", m) for m in
                                                            ("float32", "float16", "dynamic", "int8", "qat")]
                     + [("tfjs", "float32"), ("tfjs", "uint8")])]
    return {"config": {"backbone": "efficientnet_lite0", "strategies": ["a", "b"], "limit": None},
            "data": {"source": "digits"}, "strategies": strategies, "artifacts": artifacts, "budget": budget}


def test_plot_labels_never_overlap_and_name_strategy_and_mode():
    fig = report.accuracy_vs_latency_figure(crowded_results({"ms": 1.01, "kb": None, "pick": None}))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    [ax] = fig.axes
    from matplotlib.text import Text

    boxes = [(label.get_text(), Text.get_window_extent(label, renderer)) for label in ax.texts]  # without the line
    assert len(boxes) == 21 and "fine-tune:2 tflite int8" in {text for text, _ in boxes}
    for i, (name, box) in enumerate(boxes):
        assert 0 <= box.y0 and box.y1 <= fig.bbox.height and box.x1 <= fig.bbox.width, name  # inside the figure
        for other, other_box in boxes[i + 1:]:
            assert not box.overlaps(other_box), (name, other)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "latency budget (1.01 ms)" in legend


def test_the_answer_comes_first():
    results = crowded_results()
    results["artifacts"][-1]["passes_gate"] = False  # the most accurate: tfjs uint8, below its gate
    assert report.summary_lines(results)[0] == (
        "Ship: fine-tune:all / tfjs float32: accuracy 0.9019, p50 1.02 ms, 4.00 MB; the most accurate artifact "
        "that agrees with its Keras model.")
    results["budget"] = {"ms": None, "kb": 1500, "pick": None}  # a size budget: only the small files
    results["artifacts"][-3]["latency"] = None  # the best of those was not timed: no latency budget, still shipped
    assert report.summary_lines(results)[0] == (
        "Ship: fine-tune:all / tflite qat: accuracy 0.9018, latency not measured, 1.00 MB; the most accurate artifact "
        "that agrees with its Keras model within size <= 1500 kB.")
    for row in results["artifacts"]:
        row["passes_gate"] = False
    assert report.summary_lines(results)[0] == "Ship: nothing; no artifact passes its agreement gate within size <= 1500 kB."
