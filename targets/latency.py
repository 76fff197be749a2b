"""Run a timing command in a fresh process and parse its one-line JSON report."""
from __future__ import annotations

import json
import subprocess

from targets.errors import FactoryError


def run_timer(command: list[str], what: str, timeout: float = 600) -> dict:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise FactoryError(f"timing {what} failed: {result.stderr.strip()[-400:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
