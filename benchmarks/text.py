"""Text: a frozen MiniLM encoder, or its top transformer layers fine-tuned, against TF-IDF.

`factory bench` on a bundled text set (--data: debian-packages, 2,566 Debian package
descriptions in 10 archive sections, or debian-summaries, their one-line summaries; split
1,796 train / 257 validation / 513 test), minilm_l6 at --max-length tokens per text (128),
the build's default training recipe (head 30 epochs with early stopping; fine-tuning
5 epochs at a tenth of the learning rate), feature extraction and fine-tuning of the top 2
transformer layers (or --strategy), the advisor's race, and the TF-IDF + logistic regression
baseline on the same split. Artifacts: TFLite float32, float16, dynamic and int8, TF.js
float16, each checked against its Keras model on the 513 test texts, timed
per text in a fresh process (every position a token: the longest text).
Prints the table and records the bench's files in benchmarks/results/text/<data>[_len-N]/.

    python benchmarks/text.py [--data NAME] [--max-length N] [--strategy NAME ...] [--run-folder DIR]
"""
import argparse
import dataclasses
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from factory.bench.config import BENCH_EXPORT, BenchSpec  # noqa: E402
from factory import text_data  # noqa: E402
from factory.specs import BackboneSpec, DataSpec, TrainingSpec  # noqa: E402
from recording import run_and_record  # noqa: E402

RECORDED = Path(__file__).parent / "results" / "text"
MAX_LENGTH = 128
MODES = ("float32", "float16", "dynamic", "int8")  # on TF.js: float16 (its uint8 and float32: README)


def ratio_table(results: dict) -> list[str]:
    """Strategies against the baseline, then every artifact against its own Keras model."""
    base = results["baseline"] or {}
    lines = ["| strategy | Keras test accuracy | vs TF-IDF (points) | train s | peak RSS MB |", "|---|---|---|---|---|"]
    for row in [r for r in results["strategies"] if r.get("status") == "ok"] + ([base] if base else []):
        gain = (row["keras_accuracy"] - base["keras_accuracy"]) * 100 if base.get("keras_accuracy") else None
        lines.append(f"| {row['strategy_label']} | {row['keras_accuracy']:.4f} | "
                     f"{'-' if row is base or gain is None else f'{gain:+.1f}'} | {row['train_seconds']:.0f} | "
                     f"{row.get('peak_rss_mb') or '-'} |")
    lines += ["", "| strategy | artifact | accuracy | agreement | MB | gzip MB | p50 ms per text |",
              "|---|---|---|---|---|---|---|"]
    for row in results["artifacts"]:
        if row["status"] != "ok":
            lines.append(f"| {row['strategy']} | {row['target']} {row['quantize']} | failed: {row['error']} |||||")
            continue
        lines.append(f"| {row['strategy']} | {row['target']} {row['quantize']} | {row['accuracy']:.4f} | "
                     f"{row['agreement']:.4f} | {row['bytes'] / 1e6:.1f} | {row['gzip_bytes'] / 1e6:.1f} | "
                     f"{row['latency']['p50_ms']:.1f} |")
    advice = results.get("advice") or {}
    if advice.get("strategy"):
        depth = ("all" if advice["unfreeze_blocks"] is None and advice["unfreeze"] is None
                 else f"top {advice['unfreeze_blocks']} blocks" if advice["unfreeze_blocks"] else f"top {advice['unfreeze']}")
        pick = advice["strategy"] + ("" if advice["strategy"] == "feature-extraction" else f" ({depth})")
        reasons = "; ".join(advice["reasons"])
        verdict = "" if reasons.startswith(advice["verdict"]) else f"{advice['verdict']}: "
        lines += ["", f"Advisor: {pick}, {verdict}{reasons}"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=sorted(text_data.NAMED), default="debian-packages")
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH, help=f"tokens per text (default {MAX_LENGTH})")
    parser.add_argument("--strategy", action="append", help="default: feature-extraction and fine-tune:2")
    parser.add_argument("--run-folder", type=Path,
                        default=Path("runs") / datetime.now().strftime("text-%Y%m%d-%H%M%S"))
    args = parser.parse_args()
    spec = BenchSpec(
        data=DataSpec(args.data), out=args.run_folder, backbone=BackboneSpec("minilm_l6", args.max_length),
        training=TrainingSpec(), strategies=tuple(args.strategy or ("feature-extraction", "fine-tune:2")),
        export=dataclasses.replace(BENCH_EXPORT, quantize=MODES, latency_runs=20), throughput_runs=0)
    length = "" if args.max_length == MAX_LENGTH else f"_len-{args.max_length}"
    run_and_record(spec, RECORDED / f"{args.data}{length}", ratio_table)


if __name__ == "__main__":
    main()
