"""Write a benchmark run: results.json, results.csv, two PNG plots and a self-contained report.html."""
from __future__ import annotations

import base64
import csv
import html
import json
import os
from pathlib import Path

import numpy as np

from factory.bench.results import ok, p50, pareto, pick

CSV_COLUMNS = [
    "strategy", "target", "quantize", "status", "accuracy", "agreement", "passes_gate", "latency_p50_ms",
    "latency_p90_ms", "threads", "runtime", "throughput_images_per_s", "throughput_batch", "bytes",
    "gzip_bytes", "convert_seconds", "keras_accuracy", "train_seconds", "peak_rss_mb", "pareto", "error",
]
PLOTS = {"accuracy_vs_latency": "accuracy_vs_latency.png", "training_time": "training_time_vs_accuracy.png"}
MARKERS = {"tflite": "o", "tfjs": "s"}


def write_json(out: Path, results: dict) -> None:
    partial = out / "results.json.partial"
    partial.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(partial, out / "results.json")


def write_all(out: Path, results: dict) -> None:
    write_csv(out / "results.csv", rows(results))
    plot_accuracy_vs_latency(results, out / PLOTS["accuracy_vs_latency"])
    plot_training_time(results, out / PLOTS["training_time"])
    (out / "report.html").write_text(html_report(results, out))


def rows(results: dict) -> list[dict]:
    """Every artifact, the baseline's included, flattened to the CSV columns."""
    artifacts = list(results["artifacts"])
    if results.get("baseline"):
        artifacts.append(results["baseline"])
    return [flatten(r) for r in artifacts]


def flatten(row: dict) -> dict:
    latency, throughput = row.get("latency") or {}, row.get("throughput") or {}
    flat = {k: row.get(k) for k in CSV_COLUMNS}
    flat.update(
        latency_p50_ms=_round(latency.get("p50_ms"), 3), latency_p90_ms=_round(latency.get("p90_ms"), 3),
        threads=latency.get("threads"), runtime=latency.get("runtime") or latency.get("backend"),
        throughput_batch=throughput.get("batch"), throughput_images_per_s=images_per_second(throughput),
    )
    return flat


def images_per_second(timing: dict | None) -> float | None:
    if not timing or not timing.get("p50_ms"):
        return None
    return round(timing["batch"] * 1000 / timing["p50_ms"], 1)


def _round(value, digits):
    return round(value, digits) if value is not None else None


def write_csv(path: Path, flat_rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(flat_rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(results: dict) -> dict:
    plt = _pyplot()
    palette = plt.get_cmap("tab10").colors
    return {row["strategy"]: palette[i % len(palette)] for i, row in enumerate(results["strategies"])}


LABEL_POINTS = 7  # font size of the point labels
LABEL_STEP = 1.6  # a label slot, in label heights


def label_points(ax, points: list[tuple[float, float, str]]) -> list:
    """Label each (x, y, text) point in a column right of the axes, one slot per label in the
    points' vertical order, joined to its point by a thin line: labels never overlap, however
    close the points are. Returns the label artists."""
    fig = ax.figure
    slot = LABEL_POINTS * LABEL_STEP / 72 / (ax.get_position().height * fig.get_figheight())  # axes fraction
    order = sorted(points, key=lambda p: (p[1], p[0]))
    to_axes = ax.transData + ax.transAxes.inverted()  # (after the limits are set)
    middle = float(np.mean([to_axes.transform((x, y))[1] for x, y, _ in order])) if order else 0.5
    span = slot * (len(order) - 1)
    low = min(max(middle - span / 2, 0.0), max(1.0 - span, 0.0))  # beside the points, inside the axes
    labels = []
    for i, (x, y, text) in enumerate(order):
        labels.append(ax.annotate(
            text, (x, y), xytext=(1.03, low + i * slot), textcoords="axes fraction", va="center",
            fontsize=LABEL_POINTS, color="0.2", annotation_clip=False,
            arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3}))
    return labels


def _label_height(count: int) -> float:
    """Inches of axes height that `count` label slots need."""
    return count * LABEL_POINTS * LABEL_STEP / 72 + 0.3


def plot_accuracy_vs_latency(results: dict, path: Path) -> Path:
    return _save(accuracy_vs_latency_figure(results), path)


def plot_training_time(results: dict, path: Path) -> Path:
    return _save(training_time_figure(results), path)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def accuracy_vs_latency_figure(results: dict):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plt = _pyplot()
    colors = _colors(results)
    timed = [r for r in ok(results["artifacts"]) if p50(r) is not None]
    fig = plt.figure(figsize=(11, max(6.0, _label_height(len(timed)) / 0.7)))
    ax = fig.add_axes((0.09, 0.2, 0.55, 0.7))
    for row in timed:
        ax.scatter(p50(row), row["accuracy"], color=colors[row["strategy"]], marker=MARKERS.get(row["target"], "^"),
                   s=60, edgecolors="black" if row.get("pareto") else "none", linewidths=1.2, zorder=3)
    frontier = pareto(results["artifacts"])
    if frontier:  # best accuracy reachable within each latency, drawn out to the slowest artifact
        xs = [p50(r) for r in frontier] + [max(p50(r) for r in timed)]
        ys = [r["accuracy"] for r in frontier] + [frontier[-1]["accuracy"]]
        ax.step(xs, ys, where="post", color="black", linestyle="--", linewidth=1, zorder=2)
    base = results.get("baseline")
    if base and base.get("status") == "ok" and p50(base):
        ax.scatter(p50(base), base["accuracy"], color="black", marker="*", s=160, zorder=4)
    budget = results.get("budget") or {}
    if budget.get("ms"):
        ax.axvline(budget["ms"], color="red", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow range would print overlapping minor labels
    label_points(ax, [(p50(r), r["accuracy"], f"{r['strategy']} {r['target']} {r['quantize']}") for r in timed])
    ax.set_xlabel("latency p50, batch 1 (ms, log scale; fresh process, see report for threads)")
    ax.set_ylabel("test accuracy of the artifact")
    ax.set_title(f"{results['config']['backbone']} on {results['data']['source']}: accuracy against latency")
    ax.grid(True, which="both", alpha=0.3)
    legend = [Line2D([], [], color=colors[s["strategy"]], marker="o", linestyle="", label=s["strategy_label"])
              for s in results["strategies"]]
    legend += [Line2D([], [], color="gray", marker=m, linestyle="", label=t) for t, m in MARKERS.items()]
    legend += [Line2D([], [], color="black", linestyle="--", label="Pareto frontier (outlined points)")]
    if base:
        legend.append(Line2D([], [], color="black", marker="*", linestyle="", markersize=10, label="baseline recipe"))
    if budget.get("ms"):
        legend.append(Line2D([], [], color="red", linestyle=":", label=f"latency budget ({budget['ms']} ms)"))
    fig.legend(handles=legend, fontsize=8, loc="lower left", bbox_to_anchor=(0.07, 0.0), ncol=4, frameon=False)
    return fig


def training_time_figure(results: dict):
    plt = _pyplot()
    colors = _colors(results)
    points = [(r, colors[r["strategy"]]) for r in ok(results["strategies"])]
    base = results.get("baseline")
    if base and base.get("status") == "ok":
        points.append((base, "black"))
    fig = plt.figure(figsize=(9, max(4.5, _label_height(len(points)) / 0.75)))
    ax = fig.add_axes((0.1, 0.12, 0.6, 0.78))
    for row, color in points:
        ax.scatter(row["train_seconds"], row["keras_accuracy"], color=color, s=70,
                   marker="*" if row is base else "o", zorder=3)
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("Keras test accuracy")
    ax.set_title("training time against accuracy")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.1, y=0.15)
    label_points(ax, [(r["train_seconds"], r["keras_accuracy"], r["strategy_label"]) for r, _ in points])
    return fig


def _limits(budget_ms, budget_kb) -> str:
    return " and ".join(x for x in (f"p50 <= {budget_ms} ms" if budget_ms is not None else "",
                                     f"size <= {budget_kb} kB" if budget_kb is not None else "") if x)


def ship_line(results: dict) -> str:
    """The answer in one line: the most accurate artifact that passes its agreement gate (and
    the budget, when one was given); its figures, and why that one."""
    budget = results.get("budget") or {}
    ms, kb = budget.get("ms"), budget.get("kb")
    row = pick(results["artifacts"], ms, kb)
    within = f" within {_limits(ms, kb)}" if budget else ""
    if row is None:
        return f"Ship: nothing; no artifact passes its agreement gate{within}."
    latency = f"p50 {p50(row):.2f} ms" if p50(row) is not None else "latency not measured"
    return (f"Ship: {row['strategy']} / {row['target']} {row['quantize']}: accuracy {row['accuracy']:.4f}, "
            f"{latency}, {row['bytes'] / 1e6:.2f} MB; the most accurate artifact that agrees with its Keras "
            f"model{within}.")


def describe_pick(row: dict | None, budget_ms, budget_kb) -> str:
    limits = _limits(budget_ms, budget_kb)
    if row is None:
        return f"no artifact fits {limits}"
    latency = f"p50 {p50(row):.2f} ms" if p50(row) is not None else "latency not measured"
    return (f"within {limits}: {row['strategy_label']} / {row['target']} {row['quantize']} -- accuracy "
            f"{row['accuracy']:.4f}, {latency}, {row['bytes'] / 1000:.0f} kB")


# --- HTML ---------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
tr.pareto td { background: #eef7ee; } tr.failed td { background: #fbeaea; }
img { max-width: 100%; border: 1px solid #ddd; } code { background: #f3f3f3; padding: 1px 4px; }
p.ship { font-size: 1.2em; font-weight: 600; background: #eef7ee; padding: 0.6em; }
"""


def _table(headers: list[str], body: list[list], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    lines = []
    for i, cells in enumerate(body):
        css = f' class="{classes[i]}"' if classes and classes[i] else ""
        lines.append(f"<tr{css}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def _fmt(value, spec: str = ".4f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _image(path: Path, alt: str) -> str:
    if not path.is_file():
        return f"<p>({html.escape(alt)}: not drawn)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def artifact_table_rows(results: dict) -> tuple[list[list], list[str]]:
    body, classes = [], []
    for row in rows(results):
        failed = row["status"] != "ok"
        body.append([
            row["strategy"], row["target"], row["quantize"] or "-", row["status"] if failed else _fmt(row["accuracy"]),
            _fmt(row["agreement"], ".3f") + ("" if row["passes_gate"] in (None, True) else " (below gate)"),
            _fmt(row["latency_p50_ms"], ".2f"), _fmt(row["latency_p90_ms"], ".2f"),
            _fmt(row["throughput_images_per_s"], ".0f"),
            _fmt(row["bytes"] / 1e6 if row["bytes"] else None, ".2f"),
            _fmt(row["gzip_bytes"] / 1e6 if row["gzip_bytes"] else None, ".2f"), _fmt(row["convert_seconds"], ".1f"),
            "yes" if row["pareto"] else "", row["error"] or "",
        ])
        classes.append("failed" if failed else "pareto" if row["pareto"] else "")
    return body, classes


ARTIFACT_HEADERS = ["strategy", "target", "quantize", "accuracy", "agreement", "p50 ms", "p90 ms", "images/s",
                    "MB", "gzip MB", "convert s", "Pareto", "error"]


def html_report(results: dict, out: Path) -> str:
    config, data = results["config"], results["data"]
    splits = ", ".join(f"{count:,} {name}" for name, count in data["splits"].items())
    parts = [f"<h1>edgefactory benchmark: {html.escape(config['backbone'])} on {html.escape(data['source'])}</h1>",
             f"<p class='ship'>{html.escape(ship_line(results))}</p>",
             (f"<p>{html.escape(results['created'])}, {results.get('seconds', 0):.0f} s in all. Splits: "
              f"{splits}; {len(data['classes'])} classes, input {data['input_size']} "
              f"{'tokens' if data.get('kind') == 'text' else 'px'}.</p>")]
    parts.append("<h2>Which strategy, which artifact</h2>" + _summary_html(results))
    if (results.get("advice") or {}).get("evidence"):
        from factory.advisor import table_lines

        parts.append("<h2>The advisor's race</h2><p>Short trials of each candidate on the validation split; "
                     "losers stop early. 'full' is the projected time to train a candidate fully.</p><pre>"
                     + html.escape("\n".join(table_lines(results["advice"]["evidence"]))) + "</pre>")
    parts.append("<h2>Accuracy against latency</h2>" + _image(out / PLOTS["accuracy_vs_latency"], "accuracy vs latency"))
    body, classes = artifact_table_rows(results)
    parts.append("<h2>Artifacts</h2><p>Accuracy is measured on the artifact itself in its runtime (LiteRT, "
                 "TF.js in Node), on the test split (a stratified sample of a larger one); agreement is top-1 "
                 "agreement with the Keras model. "
                 "Latency: batch 1 after warm-up in a fresh process; throughput at batch "
                 f"{config['throughput_batch']}. Green rows are on the Pareto frontier.</p>"
                 + _table(ARTIFACT_HEADERS, body, classes))
    parts.append("<h2>Training</h2>" + _image(out / PLOTS["training_time"], "training time vs accuracy")
                 + _table(["strategy", "status", "Keras accuracy", "train s", "epochs", "trainable params",
                           "RSS at start MB", "peak RSS MB", "error"], [
                     [s["strategy_label"], s["status"], _fmt(s.get("keras_accuracy")), _fmt(s.get("train_seconds"), ".1f"),
                      s.get("epochs_run", "-"), f"{s['trainable_params']:,}" if s.get("trainable_params") else "-",
                      _fmt(s.get("rss_before_mb"), ".0f"), _fmt(s.get("peak_rss_mb"), ".0f"), s.get("error", "")]
                     for s in results["strategies"] + ([results["baseline"]] if results.get("baseline") else [])]))
    parts.append("<h2>Machine and versions</h2>" + _table(["", ""], [[k, v] for k, v in results["machine"].items()])
                 + _table(["package", "version"], [[k, v or "not installed"] for k, v in results["versions"].items()])
                 + "<h3>Configuration</h3>" + _table(["setting", "value"], [
                     [key, ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else
                      json.dumps(value) if isinstance(value, dict) else "-" if value is None else value]
                     for key, value in config.items()]))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>edgefactory benchmark</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def _speed(speedup: float) -> str:
    """A training-time ratio in words: "3.2x faster", or "47.8x slower" (TF-IDF trains in seconds)."""
    return f"{speedup:.1f}x faster" if speedup >= 1 else f"{1 / speedup:.1f}x slower"


def summary_lines(results: dict) -> list[str]:
    """The conclusions in plain sentences (terminal and HTML), the answer first."""
    lines = [ship_line(results)]
    winner = next((s for s in results["strategies"] if s["strategy"] == results.get("measured_winner")), None)
    if winner:
        lines.append(f"Most accurate strategy: {winner['strategy_label']} (Keras test accuracy "
                     f"{winner['keras_accuracy']:.4f}, trained in {winner['train_seconds']:.0f} s).")
    advice = results.get("advice")
    if advice and advice.get("strategy"):
        picked = next(c["name"] for c in advice["evidence"]["candidates"] if c["picked"])
        verdict = {True: "matches the measured winner", False: "does NOT match the measured winner",
                   None: "could not be checked"}[results.get("advisor_matches")]
        lines.append(f"Advisor's race picked {picked}: {verdict} (" + "; ".join(advice.get("reasons", [])) + ").")
    elif advice:
        lines.append(f"Advisor failed: {advice.get('error')}")
    frontier = pareto(results["artifacts"])
    if frontier:
        lines.append("Pareto frontier, fastest first: " + "; ".join(
            f"{f['strategy']} {f['target']} {f['quantize']} ({f['accuracy']:.4f} at {p50(f):.2f} ms)" for f in frontier)
            + ".")
    r = results.get("ratios", {})
    if "fe_training_speedup_vs_baseline" in r:
        warm = (f" ({_speed(r['fe_warm_cache_training_speedup_vs_baseline'])} with the feature cache warm)"
                if "fe_warm_cache_training_speedup_vs_baseline" in r else "")
        lines.append(f"Feature extraction trained {_speed(r['fe_training_speedup_vs_baseline'])} than the "
                     f"baseline recipe{warm}, accuracy {r['fe_accuracy_minus_baseline'] * 100:+.1f} points.")
    if "fe_tflite_float32_latency_vs_baseline" in r:
        lines.append(f"Its float32 TFLite file runs at {r['fe_tflite_float32_latency_vs_baseline']:.2f}x the "
                     "baseline's float TFLite latency.")
    if "int8_latency_vs_float32" in r:
        lines.append(f"Full-int8 TFLite: {r['int8_latency_vs_float32']:.2f}x the float32 latency, "
                     f"{r['int8_size_vs_float32']:.2f}x the size, accuracy "
                     f"{r['int8_accuracy_minus_float32'] * 100:+.1f} points.")
    failed = [r for r in results["strategies"] + results["artifacts"] if r.get("status") == "failed"]
    if failed:
        lines.append(f"{len(failed)} cell(s) failed; their errors are in the tables.")
    return lines


def _summary_html(results: dict) -> str:
    """The conclusions after the answer, which the page shows first on its own."""
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(results)[1:]) + "</ul>"
