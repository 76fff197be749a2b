"""Peak resident memory of one stretch of work in this process.

Linux keeps a process's high-water mark (VmHWM) and lets the process reset it by writing 5
to /proc/self/clear_refs, so each training run gets its own peak even though every cell runs
in one process. Where the reset is refused, the figure is the process peak so far (marked).
"""
from __future__ import annotations

from pathlib import Path


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """with PeakMemory() as memory: ...; then memory.as_dict() -> peak and starting RSS in MB."""

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.start_kb = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        self.peak_kb = _status_kb("VmHWM")

    def as_dict(self) -> dict:
        if self.peak_kb is None:
            return {"peak_rss_mb": None, "rss_before_mb": None, "peak_is_per_cell": False}
        return {
            "peak_rss_mb": round(self.peak_kb / 1024, 1),
            "rss_before_mb": round(self.start_kb / 1024, 1) if self.start_kb else None,
            "peak_is_per_cell": self.reset,
        }
