"""Scaling: feature-extraction builds on growing Fashion-MNIST subsets, against the floor.

For each size, in one run and each in a fresh process (its own peak RSS):
  floor   one timed pass of the frozen backbone over the same images (decode + resize + backbone,
          batches of 64): what a build cannot beat. Timed right before and right after the
          build, and the build is compared with the mean of the two: this 2-core VM's speed
          drifts by 10-40% from one process to the next, and the bracket shows by how much
  build   `factory build --strategy feature-extraction --target tflite` with a cold feature cache
          (data stage, extraction, head training, test evaluation, TFLite conversion and parity
          check on up to 5,000 test images), wall time and peak RSS
and then, on the largest size but one with its cache warm: the same images again (warm), and
--new-share more images (a stratified prefix of the set grows by that share: incremental).

    python benchmarks/scaling.py [--sizes 2000 8000 32000 70000] [--input-size 224]

Records benchmarks/results/scaling.json and benchmarks/results/scaling.png.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FLOOR = """
import sys, time
from factory import backbones, classifier, data
from factory.specs import BackboneSpec, DataSpec
limit, size = int(sys.argv[1]), int(sys.argv[2])
dataset = data.load(DataSpec("fashion-mnist", limit=limit), size)
model = classifier.build(backbones.resolve(BackboneSpec(input_size=size)), len(dataset.class_names))
run = model.feature_fn()
start = time.perf_counter()
count = 0
for split in (dataset.train, dataset.val, dataset.test):
    for images, _ in split.batches(64):
        run(images)
        count += len(images)
print(count, time.perf_counter() - start)
"""


def run_measured(command: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak RSS in GB) of one child process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # no pipe to fill up
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, text=True,
                                   env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"failed: {' '.join(command)}\n{err.read()[-3000:]}")
        return out.read(), wall, usage.ru_maxrss / 1e6  # KB -> GB


def floor(limit: int, size: int) -> dict:
    out, wall, rss = run_measured([sys.executable, "-c", FLOOR, str(limit), str(size)])
    count, seconds = out.split()
    return {"images": int(count), "backbone_seconds": round(float(seconds), 1),
            "images_per_s": round(int(count) / float(seconds), 1), "process_seconds": round(wall, 1),
            "peak_rss_gb": round(rss, 3)}


def build(limit: int, size: int, cache: Path, out: Path) -> dict:
    command = [sys.executable, "-c", "from factory.cli import main; main()", "build", "--data", "fashion-mnist",
               "--limit", str(limit), "--input-size", str(size), "--strategy", "feature-extraction",
               "--target", "tflite", "--latency-runs", "0", "--cache-dir", str(cache), "--out", str(out), "--quiet"]
    _, wall, rss = run_measured(command)
    manifest = json.loads((out / "manifest.json").read_text())
    artifact = manifest["artifacts"][0]
    return {"seconds": round(wall, 1), "images_per_s": round(limit / wall, 1), "peak_rss_gb": round(rss, 3),
            "test_accuracy": round(manifest["metrics"]["keras_test_accuracy"], 4),
            "tflite_agreement": artifact["agreement"], "tflite_verify_seconds": artifact["verify_seconds"],
            "tflite_convert_seconds": artifact["convert_seconds"], "feature_cache": manifest["metrics"]["feature_cache"],
            "phases": manifest["strategy"]["phases"]}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["images"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(sizes, [r["build"]["seconds"] / 60 for r in rows], "o-", label="factory build (cold cache)")
    left.plot(sizes, [r["floor"]["backbone_seconds"] / 60 for r in rows], "s--", label="backbone pass (floor, mean of 2)")
    left.set(xlabel="images", ylabel="minutes", title="wall time")
    right.plot(sizes, [r["build"]["peak_rss_gb"] for r in rows], "o-", label="factory build")
    right.plot(sizes, [r["floor"]["peak_rss_gb"] for r in rows], "s--", label="backbone pass")
    right.set(xlabel="images", ylabel="GB", title="peak RSS", ylim=(0, None))
    for axis in (left, right):
        axis.legend()
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000, 70000])
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--new-share", type=float, default=0.01)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgefactory-scaling-") as scratch:
        scratch = Path(scratch)
        for limit in args.sizes:
            print(f"{limit:,} images: backbone pass, factory build, backbone pass ...", flush=True)
            before = floor(limit, args.input_size)
            built = build(limit, args.input_size, scratch / f"cache-{limit}", scratch / f"out-{limit}")
            after = floor(limit, args.input_size)
            seconds = round((before["backbone_seconds"] + after["backbone_seconds"]) / 2, 1)
            row = {"images": limit, "floor": {"backbone_seconds": seconds, "images_per_s": round(limit / seconds, 1),
                                              "peak_rss_gb": max(before["peak_rss_gb"], after["peak_rss_gb"]),
                                              "before": before, "after": after},
                   "build": built, "build_vs_floor": round(built["seconds"] / seconds, 2)}
            rows.append(row)
            print(f"  floor {before['backbone_seconds']:.0f} s before, {after['backbone_seconds']:.0f} s after, "
                  f"build {built['seconds']:.0f} s ({row['build_vs_floor']}x the mean), peak RSS "
                  f"{built['peak_rss_gb']:.2f} GB, accuracy {built['test_accuracy']:.4f}", flush=True)
        base = args.sizes[-2] if len(args.sizes) > 1 else args.sizes[0]
        grown = int(round(base * (1 + args.new_share)))
        print(f"warm: the {base:,} images again, all cached ...", flush=True)
        warm = build(base, args.input_size, scratch / f"cache-{base}", scratch / "out-warm")
        print(f"incremental: {base:,} cached + {grown - base:,} new images ...", flush=True)
        incremental = build(grown, args.input_size, scratch / f"cache-{base}", scratch / "out-incremental")
        cold = next(r for r in rows if r["images"] == base)["build"]
    result = {
        "what": "feature-extraction builds vs one backbone pass, Fashion-MNIST, cold feature cache",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "input_size": args.input_size,
        "rows": rows,
        "incremental": {
            "cached_images": base, "new_images": grown - base, "cold_seconds": cold["seconds"],
            "cold_extract_seconds": cold["feature_cache"]["extract_seconds"],
            "warm_seconds": warm["seconds"], "seconds": incremental["seconds"],
            "extracted": incremental["feature_cache"]["extracted"],
            "extract_seconds": incremental["feature_cache"]["extract_seconds"],
            "share_of_cold": round(incremental["seconds"] / cold["seconds"], 3),
            "added_cost_share_of_cold": round((incremental["seconds"] - warm["seconds"]) / cold["seconds"], 3),
            "peak_rss_gb": incremental["peak_rss_gb"]},
        "peak_rss_largest_vs_smallest": round(rows[-1]["build"]["peak_rss_gb"] / rows[0]["build"]["peak_rss_gb"], 3),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, RESULTS / "scaling.png")
    inc = result["incremental"]
    print(f"warm rebuild {inc['warm_seconds']:.0f} s; +{inc['new_images']:,} images: {inc['seconds']:.0f} s "
          f"({inc['extracted']:,} extracted in {inc['extract_seconds']:.0f} s) = {inc['share_of_cold']:.1%} of the "
          f"cold {base:,}-image build ({inc['added_cost_share_of_cold']:+.1%} over the warm rebuild); "
          f"peak RSS {result['peak_rss_largest_vs_smallest']}x from "
          f"{rows[0]['images']:,} to {rows[-1]['images']:,} images -> {RESULTS / 'scaling.json'}")


if __name__ == "__main__":
    main()
