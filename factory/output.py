"""Write a build into a staging folder, then swap it into place: never a half-written --out."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from targets.errors import FactoryError
from factory.manifest import MANIFEST_NAME


def check_destination(out: Path) -> None:
    """Fail early if `out` holds files that are not an earlier build (they would be lost)."""
    if out.exists() and not out.is_dir():
        raise FactoryError(f"--out {out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise FactoryError(f"--out {out} is not empty and holds no {MANIFEST_NAME}; choose an empty or new folder")


@contextmanager
def staged(out: Path):
    """Yield a staging folder beside `out`; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    staging.chmod(0o755)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if out.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous-", dir=out.parent))
        os.replace(out, previous / "build")
    os.replace(staging, out)
    if previous:
        shutil.rmtree(previous, ignore_errors=True)
