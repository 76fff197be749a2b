"""The standard benchmark suite: `factory bench` on Fashion-MNIST with EfficientNet-Lite0.

Runs the whole grid (feature extraction, fine-tune top 2 blocks, full fine-tune x every TFLite
and TF.js quantization, plus the baseline recipe) with the defaults of `factory bench`, then
copies the small result files (JSON, CSV, plots, HTML report; no models) into
benchmarks/results/suite/ for the README. About 20 minutes on 2 CPU cores.

    python benchmarks/suite.py [--limit 3000] [--epochs 15] [--fine-tune-epochs 3] [--run-folder DIR]
"""
import argparse
import dataclasses
import shutil
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from factory.bench import grid  # noqa: E402
from factory.bench.config import BENCH_LIMIT, BENCH_TRAINING, BenchSpec  # noqa: E402
from factory.specs import DataSpec  # noqa: E402
from factory.bench.report import PLOTS, summary_lines  # noqa: E402
from factory.progress import Reporter  # noqa: E402

RECORDED = Path(__file__).parent / "results" / "suite"
FILES = ["results.json", "results.csv", "report.html", *PLOTS.values()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=BENCH_LIMIT)
    parser.add_argument("--epochs", type=int, default=BENCH_TRAINING.epochs)
    parser.add_argument("--fine-tune-epochs", type=int, default=BENCH_TRAINING.fine_tune_epochs)
    parser.add_argument("--budget-ms", type=float, default=1.0)
    parser.add_argument("--run-folder", type=Path,
                        default=Path("runs") / datetime.now().strftime("suite-%Y%m%d-%H%M%S"))
    args = parser.parse_args()
    training = dataclasses.replace(BENCH_TRAINING, epochs=args.epochs, fine_tune_epochs=args.fine_tune_epochs)
    spec = BenchSpec(DataSpec("fashion-mnist", limit=args.limit), args.run_folder, training=training,
                     budget_ms=args.budget_ms)
    with Reporter() as reporter:
        results = grid.run(spec, reporter)
    RECORDED.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(args.run_folder / name, RECORDED / name)
    print("\n".join(summary_lines(results)))
    print(f"-> {args.run_folder}/report.html, recorded in {RECORDED}")


if __name__ == "__main__":
    main()
