"""Run a benchmark grid and record it: the bench's files and a ratio table, copied into the
repository's results folder for benchmarks/README.md."""
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from factory.bench import grid  # noqa: E402
from factory.bench.report import PLOTS  # noqa: E402
from factory.progress import Reporter  # noqa: E402

FILES = ["results.json", "results.csv", "report.html", *PLOTS.values()]


def run_and_record(spec, recorded: Path, ratio_table) -> dict:
    """Run `spec`'s grid into its run folder, copy its files to `recorded` with ratios.md
    (`ratio_table(results)`: markdown lines), and print the table."""
    with Reporter() as reporter:
        results = grid.run(spec, reporter)
    recorded.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(Path(spec.out) / name, recorded / name)
    table = "\n".join(ratio_table(results))
    (recorded / "ratios.md").write_text(table + "\n")
    print(table)
    print(f"-> {spec.out}/report.html, recorded in {recorded}")
    return results
