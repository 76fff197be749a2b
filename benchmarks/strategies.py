"""Feature extraction vs fine-tuning on real data, and whether the advisor picks the winner.

For each dataset: the advisor's probe and recommendation, then a feature-extraction build and
a fine-tuning build (top blocks, as recommended or --unfreeze-blocks), both through the
pipeline's prepare and train stages (no export). Prints a table and records benchmarks/results/strategies.json.

    python benchmarks/strategies.py [--fashion-limit 10000] [--digits-size 64]
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from factory import pipeline  # noqa: E402
from factory.progress import Reporter  # noqa: E402
from factory.specs import BackboneSpec, DataSpec, TrainingSpec  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "strategies.json"


def run_build(reporter, data: DataSpec, backbone: BackboneSpec, training: TrainingSpec) -> dict:
    """What a build's prepare and train stages give (no export): test accuracy, wall time, phases."""
    start = time.perf_counter()
    trained = pipeline.train(pipeline.prepare(data, backbone), training, reporter=reporter)
    return {
        "test_accuracy": trained.test_accuracy,
        "seconds": round(time.perf_counter() - start, 1),
        "phases": [(p.name, p.epochs_run, round(p.best_val_accuracy, 4)) for p in trained.phases],
    }


def compare(name: str, source: str, size: int, limit, blocks: int, epochs: int, reporter) -> dict:
    data, backbone = DataSpec(source, limit=limit), BackboneSpec(input_size=size)
    prepared = pipeline.prepare(data, backbone)
    dataset = prepared.data
    advice = pipeline.advise(prepared, seed=data.seed)
    fe = run_build(reporter, data, backbone, TrainingSpec(strategy="feature-extraction"))
    ft = run_build(reporter, data, backbone, TrainingSpec(
        strategy="fine-tune", unfreeze_blocks=advice.unfreeze_blocks or blocks, fine_tune_epochs=epochs))
    winner = "fine-tune" if ft["test_accuracy"] > fe["test_accuracy"] else "feature-extraction"
    return {
        "dataset": name, "input_size": size, "splits": dataset.sizes(),
        "feature_extraction": fe, "fine_tune": ft,
        "fine_tune_margin": round(ft["test_accuracy"] - fe["test_accuracy"], 4),
        "measured_winner": winner,
        "advice": {"strategy": advice.strategy, "unfreeze_blocks": advice.unfreeze_blocks,
                   "reasons": advice.reasons, "evidence": advice.evidence},
        "advisor_matches": advice.strategy == winner,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion-limit", type=int, default=10000)
    parser.add_argument("--fashion-size", type=int, default=96)
    parser.add_argument("--digits-size", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=3, help="blocks to fine-tune where the advisor says none")
    parser.add_argument("--fine-tune-epochs", type=int, default=8)
    args = parser.parse_args()
    with Reporter() as reporter:
        rows = [
            compare("fashion-mnist", "fashion-mnist", args.fashion_size, args.fashion_limit, args.blocks,
                    args.fine_tune_epochs, reporter),
            compare("digits", "digits", args.digits_size, None, args.blocks, args.fine_tune_epochs, reporter),
        ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{'dataset':15} {'FE acc':>7} {'FT acc':>7} {'margin':>7} {'FE s':>6} {'FT s':>6}  winner / advisor")
    for r in rows:
        fe, ft = r["feature_extraction"], r["fine_tune"]
        print(f"{r['dataset']:15} {fe['test_accuracy']:7.4f} {ft['test_accuracy']:7.4f} {r['fine_tune_margin']:+7.4f} "
              f"{fe['seconds']:6.0f} {ft['seconds']:6.0f}  {r['measured_winner']} / {r['advice']['strategy']}"
              f" ({'match' if r['advisor_matches'] else 'MISMATCH'})")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
