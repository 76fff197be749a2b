"""Pruning: what `--prune` buys in size, and what it costs in accuracy and agreement.

`factory bench` on Fashion-MNIST, 5,100 images at 96 px split 2,550 train / 510 validation /
2,040 test (as benchmarks/compression.py, so one test image is 0.05 points),
EfficientNet-Lite0, the default strategies (or --strategy), each without and with pruning to
--sparsity; TFLite float32, float16, dynamic and int8, TF.js float32, float16 and uint8.
Prints, per artifact, its size and gzip size as ratios to the same target's float32 file of
the unpruned strategy, its gzip size against that file's gzip size (the download without
pruning), its agreement with its own Keras model and its accuracy's distance from it, its
batch-1 latency as a ratio to its own build's float32 file, and the Keras accuracy pruning
gained or gave up; records the bench's files in
benchmarks/results/pruning/sparsity-<S>_<strategies>/, and draws every sparsity recorded for
those strategies in benchmarks/results/pruning/tradeoff_<strategies>.png: Keras test accuracy
against the float16 TFLite file's download (gzip) size.

    python benchmarks/pruning.py [--sparsity S] [--strategy NAME ...] [--run-folder DIR]
"""
import argparse
import dataclasses
import json
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from factory.bench.config import BENCH_EXPORT, DEFAULT_STRATEGIES, BenchSpec  # noqa: E402
from factory.bench.report import _pyplot  # noqa: E402
from factory.specs import DataSpec  # noqa: E402
from recording import run_and_record  # noqa: E402

RECORDED = Path(__file__).parent / "results" / "pruning"
# 0.5 keeps the accuracy best; the float16 download measured 0.320x of the float32 file at
# 0.5 and 0.237x at 0.7 (benchmarks/README.md, "Pruning")
SPARSITY = 0.5
STRATEGIES = DEFAULT_STRATEGIES
MODES = ("float32", "float16", "dynamic", "int8", "uint8")


def float32_of(rows: list[dict], strategy: str, target: str) -> dict | None:
    return next((r for r in rows if r["strategy"] == strategy and r["target"] == target
                 and r["quantize"] == "float32"), None)


def ratio_table(results: dict) -> list[str]:
    """One markdown row per artifact, each compared with the unpruned strategy's float32 file."""
    rows = [r for r in results["artifacts"] if r["status"] == "ok"]
    keras = {s["strategy"]: s["keras_accuracy"] for s in results["strategies"] if s.get("status") == "ok"}
    lines = ["| strategy | artifact | size | gzip size | vs float32 gzip | agreement | accuracy - keras (pt) "
             "| p50 latency vs own float32 | keras accuracy (pt vs unpruned) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        unpruned = row["strategy"].partition("+")[0]
        base = float32_of(rows, unpruned, row["target"])
        own = float32_of(rows, row["strategy"], row["target"])
        if base is None or own is None:
            continue
        lines.append(
            f"| {row['strategy']} | {row['target']} {row['quantize']} | {row['bytes'] / base['bytes']:.3f}x "
            f"| {row['gzip_bytes'] / base['bytes']:.3f}x | {row['gzip_bytes'] / base['gzip_bytes']:.3f}x "
            f"| {row['agreement']:.4f} | {100 * (row['accuracy'] - keras[row['strategy']]):+.2f} "
            f"| {row['latency']['p50_ms'] / own['latency']['p50_ms']:.2f}x "
            f"| {keras[row['strategy']]:.4f} ({100 * (keras[row['strategy']] - keras[unpruned]):+.2f}) |")
    return lines


def plot_tradeoff(names: str) -> Path:
    """Each strategy's Keras test accuracy against its float16 TFLite file's gzip size (a ratio
    to the unpruned float32 file), unpruned and at every sparsity recorded for `names`."""
    points: dict[str, dict[float, tuple[float, float]]] = {}
    for folder in sorted(RECORDED.glob("sparsity-*")):
        if folder.name.partition("_")[2] != names:
            continue
        results = json.loads((folder / "results.json").read_text())
        rows = [r for r in results["artifacts"] if r["status"] == "ok" and r["target"] == "tflite"]
        for strategy in (s for s in results["strategies"] if s.get("status") == "ok"):
            base, _, sparsity = strategy["strategy"].partition("+prune:")
            float32 = float32_of(rows, base, "tflite")
            float16 = next((r for r in rows if r["strategy"] == strategy["strategy"] and r["quantize"] == "float16"), None)
            if float32 and float16:
                points.setdefault(base, {}).setdefault(
                    float(sparsity or 0), (float16["gzip_bytes"] / float32["bytes"], strategy["keras_accuracy"]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for base, by_sparsity in points.items():
        order = sorted(by_sparsity)
        ax.plot(*zip(*(by_sparsity[s] for s in order)), marker="o", label=base)
        for s in order:
            ax.annotate(f"{s:.0%}", by_sparsity[s], textcoords="offset points", xytext=(5, 3), fontsize=8)
    ax.set_xlabel("float16 TFLite download (gzip) / unpruned float32 file")
    ax.set_ylabel("Keras test accuracy")
    ax.set_title("Pruning: accuracy against download size (labels: sparsity)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = RECORDED / f"tradeoff_{names}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=SPARSITY, help=f"default: {SPARSITY}")
    parser.add_argument("--strategy", action="append", help=f"default: {', '.join(STRATEGIES)}")
    parser.add_argument("--run-folder", type=Path,
                        default=Path("runs") / datetime.now().strftime("pruning-%Y%m%d-%H%M%S"))
    args = parser.parse_args()
    chosen = args.strategy or STRATEGIES
    strategies = [s for name in chosen for s in (name, f"{name}+prune:{args.sparsity}")]
    names = "_".join(n.replace(":", "-") for n in chosen)
    spec = BenchSpec(DataSpec("fashion-mnist", limit=5100, test_fraction=0.4), args.run_folder,
                     strategies=tuple(strategies), export=dataclasses.replace(BENCH_EXPORT, quantize=MODES),
                     throughput_runs=0, baseline=False, advisor=False)
    run_and_record(spec, RECORDED / f"sparsity-{args.sparsity}_{names}", ratio_table)
    print(f"-> {plot_tradeoff(names)}")


if __name__ == "__main__":
    main()
