"""Write a build into a staging folder, then swap it into place: never a half-written --out.

Hidden work folders carry their owner's PID in their name (`.NAME.staging-PID-xyz`,
`.NAME.previous-PID-xyz`, and the store's `.VERSION.incoming-PID-xyz`), so a leftover of a
killed process can be told from one a live process is still writing (`leftovers`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from targets.errors import FactoryError
from factory.manifest import MANIFEST_NAME

WORK_KINDS = ("staging", "previous", "incoming")
_WORK_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>staging|previous|incoming)-(?:(?P<pid>\d+)-)?[^/]*\Z")
_CHECKPOINT_NAME = re.compile(r"^\.(?P<name>.+)\.checkpoint\Z")
OWNER_FILE = "owner.pid"  # a checkpoint folder's owner, when its writer records one (record_owner)
CHECKPOINT_IDLE_S = 3600  # a checkpoint with no recorded owner counts as abandoned after this long untouched


def check_destination(out: Path) -> None:
    """Fail early if `out` holds files that are not an earlier build (they would be lost)."""
    out = Path(out)
    if out.name in ("", "..") or out.resolve() == Path.cwd().resolve() or out.resolve() in Path.cwd().resolve().parents:
        raise FactoryError(f"--out {out} is the current folder or holds it; name a new folder (e.g. --out ./app)")
    if out.exists() and not out.is_dir():
        raise FactoryError(f"--out {out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST_NAME).is_file():
            raise FactoryError(f"--out {out} is not empty and holds no {MANIFEST_NAME}; choose an empty or new folder")
        if not _is_factory_manifest(out / MANIFEST_NAME):
            raise FactoryError(f"--out {out} holds another program's {MANIFEST_NAME} (not an edgefactory build), and "
                               "everything in --out is replaced; choose an empty or new folder")


def _is_factory_manifest(path: Path) -> bool:
    """Whether `path` is an edgefactory manifest (its "format"), so its folder is an earlier build or fetch."""
    try:
        with open(path, "rb") as f:
            body = json.loads(f.read(8 << 20))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(body, dict) and str(body.get("format", "")).startswith("edgefactory-manifest/")


def work_dir(parent: Path, name: str, kind: str) -> Path:
    """A new hidden folder `.name.kind-PID-random` in `parent`, owned by this process."""
    return Path(tempfile.mkdtemp(prefix=f".{name}.{kind}-{os.getpid()}-", dir=parent))


def work_file(parent: Path, name: str, kind: str) -> tuple[int, Path]:
    """A new hidden file `.name.kind-PID-random` in `parent`: (open descriptor, path)."""
    fd, path = tempfile.mkstemp(prefix=f".{name}.{kind}-{os.getpid()}-", dir=parent)
    return fd, Path(path)


@contextmanager
def staged(out: Path):
    """Yield a staging folder beside `out`; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = work_dir(out.parent, out.name, "staging")
    staging.chmod(0o755)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    try:
        if out.exists() or out.is_symlink():
            previous = work_dir(out.parent, out.name, "previous")
            os.replace(out, previous / "build")
        os.replace(staging, out)
    except OSError as exc:
        if previous and (previous / "build").exists() and not out.exists():
            os.replace(previous / "build", out)  # put the earlier build back
        shutil.rmtree(staging, ignore_errors=True)
        raise FactoryError(f"--out {out}: cannot move the finished files into place ({exc.strerror or exc})") from None
    finally:
        if previous:
            shutil.rmtree(previous, ignore_errors=True)


# --- leftovers of killed processes -----------------------------------------------------------
@dataclass
class Leftover:
    path: Path
    kind: str  # staging, previous, incoming or checkpoint
    owner: int | None  # the PID that made it, if recorded
    alive: bool  # True when a live process may still own it: never removed then
    why: str  # one phrase for the report


def record_owner(folder: Path) -> None:
    """Mark `folder` (e.g. a build checkpoint) as owned by this process, for `leftovers`."""
    (Path(folder) / OWNER_FILE).write_text(f"{os.getpid()}\n")


def leftovers(folder: Path, checkpoints: bool = False) -> list[Leftover]:
    """Hidden work folders and files in `folder` (not below it) left by killed processes or in use."""
    found = []
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return []
    for path in entries:
        match = _WORK_NAME.match(path.name)
        if match:
            pid = int(match["pid"]) if match["pid"] else None
            found.append(_judge(path, match["kind"], pid))
        elif checkpoints and _CHECKPOINT_NAME.match(path.name) and path.is_dir() and not path.is_symlink():
            found.append(_judge_checkpoint(path))
    return found


def _judge(path: Path, kind: str, pid: int | None, record: Path | None = None) -> Leftover:
    """`record`: what the owner wrote when it claimed `path` (default: `path` itself), to tell a reused PID."""
    if pid is None:
        return Leftover(path, kind, None, True, "no owner recorded (made by an older version): remove it by hand "
                                                "once no build or publish is running")
    if owns(pid, record or path):
        return Leftover(path, kind, pid, True, f"process {pid} is still running")
    return Leftover(path, kind, pid, False, f"process {pid} is gone")


def _judge_checkpoint(path: Path) -> Leftover:
    try:
        pid = int((path / OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is not None:  # a resumed build rewrites owner.pid in place: the folder itself may be older than it
        return _judge(path, "checkpoint", pid, path / OWNER_FILE)
    idle = time.time() - _newest_mtime(path)
    if idle < CHECKPOINT_IDLE_S:
        return Leftover(path, "checkpoint", None, True, f"written {idle / 60:.0f} min ago: a build may be running")
    return Leftover(path, "checkpoint", None, False, f"untouched for {idle / 3600:.1f} h")


def _newest_mtime(folder: Path) -> float:
    newest = folder.lstat().st_mtime
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                pass
    return newest


def owns(pid: int, path: Path) -> bool:
    """Whether process `pid` is alive and old enough to have made `path` (a reused PID is not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    started = _start_time(pid)
    try:
        changed = path.lstat().st_ctime  # ctime: no copy or utime can set it back before creation
    except OSError:
        return False
    return started is None or started <= changed + 1


def _start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), from /proc on Linux; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def remove(leftover: Leftover) -> None:
    if leftover.path.is_dir() and not leftover.path.is_symlink():
        shutil.rmtree(leftover.path)
    else:
        leftover.path.unlink()
