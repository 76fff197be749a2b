"""What the grid's measurements say: Pareto frontier, winner, ratios to the baseline, budget picks."""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from factory import manifest
from targets.errors import FactoryError


def new(spec, dataset) -> dict:
    return {
        "format": "edgefactory-bench/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "config": spec.as_dict(),
        "machine": machine(),
        "versions": manifest.package_versions(),
        "data": {"source": spec.data.source, "classes": dataset.class_names, "splits": dataset.sizes(),
                 "input_size": dataset.input_size, "kind": dataset.train.kind},
        "strategies": [], "artifacts": [], "baseline": None, "advice": None,
    }


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                   if line.startswith("MemTotal:")), 0)
    return {
        "platform": platform.platform(), "cpu": cpu, "cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(mem_kb / 1024 ** 2, 1), "python": platform.python_version(),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok"]


def p50(row: dict) -> float | None:
    return row["latency"]["p50_ms"] if row.get("latency") else None


def pareto(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both latency (lower) and accuracy (higher), fastest first."""
    timed = sorted((r for r in ok(rows) if p50(r) is not None), key=lambda r: (p50(r), -r["accuracy"]))
    frontier, best = [], -1.0
    for row in timed:
        if row["accuracy"] > best:
            frontier.append(row)
            best = row["accuracy"]
    return frontier


def pick(rows: list[dict], budget_ms: float | None, budget_kb: float | None) -> dict | None:
    """The most accurate artifact within the budgets that passes its agreement gate (ties: the
    faster one); None if none fits. An artifact below its gate is not the model evaluated."""
    fitting = [
        r for r in ok(rows)
        if r.get("passes_gate", True)
        and (budget_ms is None or (p50(r) is not None and p50(r) <= budget_ms))
        and (budget_kb is None or r["bytes"] <= budget_kb * 1000)
    ]
    if not fitting:
        return None
    return max(fitting, key=lambda r: (r["accuracy"], -(p50(r) or float("inf"))))


def winner(strategies: list[dict]) -> dict | None:
    trained = ok(strategies)
    return max(trained, key=lambda r: r["keras_accuracy"]) if trained else None


def find(rows: list[dict], key: dict | None) -> dict | None:
    """The measured row whose fields match `key` (e.g. strategy, target, quantize)."""
    if not key:
        return None
    return next((r for r in ok(rows) if all(r.get(k) == v for k, v in key.items())), None)


def ratios(results: dict) -> dict:
    """Headline comparisons, each measured side by side in this run (None where a cell is missing)."""
    fe = next((r for r in ok(results["strategies"]) if r["strategy"] == "feature-extraction"), None)
    base = results["baseline"] if results["baseline"] and results["baseline"].get("status") == "ok" else None
    fe_float = find(results["artifacts"], {"strategy": "feature-extraction", "target": "tflite", "quantize": "float32"})
    fe_int8 = find(results["artifacts"], {"strategy": "feature-extraction", "target": "tflite", "quantize": "int8"})
    out: dict = {}
    if fe and base:
        out["fe_training_speedup_vs_baseline"] = round(base["train_seconds"] / fe["train_seconds"], 2)
        if fe.get("warm_cache_train_seconds"):
            out["fe_warm_cache_training_speedup_vs_baseline"] = round(
                base["train_seconds"] / fe["warm_cache_train_seconds"], 2)
        out["fe_accuracy_minus_baseline"] = round(fe["keras_accuracy"] - base["keras_accuracy"], 4)
    if fe_float and base and p50(base):
        out["fe_tflite_float32_latency_vs_baseline"] = round(p50(fe_float) / p50(base), 3)
    if fe_int8 and fe_float:
        out["int8_latency_vs_float32"] = round(p50(fe_int8) / p50(fe_float), 3)
        out["int8_size_vs_float32"] = round(fe_int8["bytes"] / fe_float["bytes"], 3)
        out["int8_accuracy_minus_float32"] = round(fe_int8["accuracy"] - fe_float["accuracy"], 4)
    best = winner(results["strategies"])
    if best and base:
        out["best_strategy_accuracy_minus_baseline"] = round(best["keras_accuracy"] - base["keras_accuracy"], 4)
    return out


def finish(results: dict, budget_ms: float | None, budget_kb: float | None) -> None:
    """Fill in the derived parts once every cell has run."""
    frontier = pareto(results["artifacts"])
    for row in results["artifacts"]:
        row["pareto"] = any(row is f for f in frontier)
    best = winner(results["strategies"])
    results["measured_winner"] = best["strategy"] if best else None
    advice = results["advice"]
    best = winner([s for s in results["strategies"] if "+prune:" not in s["strategy"]])  # what the advisor races
    if best and advice and advice.get("strategy"):
        family = "feature-extraction" if best["strategy"] == "feature-extraction" else "fine-tune"
        tied = {_family(c["name"]) for c in advice["evidence"]["candidates"] if c["tied"]}
        results["advisor_matches"] = advice["strategy"] == family or family in tied  # too close: either is right
    else:
        results["advisor_matches"] = None
    results["ratios"] = ratios(results)
    if budget_ms is not None or budget_kb is not None:
        chosen = pick(results["artifacts"], budget_ms, budget_kb)
        results["budget"] = {"ms": budget_ms, "kb": budget_kb, "pick": _key(chosen) if chosen else None}
    results["complete"] = True


def _family(candidate: str) -> str:
    return "feature-extraction" if candidate == "feature-extraction" else "fine-tune"


def _key(row: dict) -> dict:
    return {k: row[k] for k in ("strategy", "target", "quantize")}


def load(run_folder: Path) -> dict:
    path = Path(run_folder) / "results.json"
    if not path.is_file():
        raise FactoryError(f"{run_folder}: no results.json; pass the run folder a `factory bench` wrote")
    return json.loads(path.read_text())
