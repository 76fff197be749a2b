"""Rebuild the pinned `debian-packages` text dataset from apt's index files.

Each example is one Debian package's description (its one-line summary and its long
description), labelled with the package's archive section (games, mail, science, ...): a
real property of the text, written by the package's maintainer. One package per source
package (binaries built from one source share most of their description, which would leak
between the splits), at most PER_CLASS per section, chosen with a fixed seed.

`debian-summaries` is the same packages, each text only its one-line summary ("Plan 9
filesystem (v9fs) user mount utilities."). 12 summaries are shared by two packages each,
one of them ("transitional package.") across two sections.

The snapshot ships beside this file (debian_descriptions.jsonl.gz); rebuild it on a Debian
machine after `apt-get update -o Acquire::Languages=en` with

    python -m factory.datasets.debian_descriptions [OUTPUT]
"""
from __future__ import annotations

import gzip
import io
import json
import random
import subprocess
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("debian_descriptions.jsonl.gz")
SECTIONS = ("admin", "database", "editors", "games", "graphics", "mail", "science", "sound", "video", "web")
PER_CLASS = 300
SEED = 0
LISTS = Path("/var/lib/apt/lists")
RELEASE = "deb.debian.org_debian_dists_bookworm_main"


def descriptions():
    """The snapshot as an open JSON Lines text handle: summary and long description."""
    return gzip.open(SNAPSHOT, "rt", encoding="utf-8")


def summaries():
    """The snapshot's rows with each text cut to its first line, the summary."""
    with descriptions() as handle:
        rows = [json.loads(line) for line in handle]
    return io.StringIO("".join(json.dumps({**row, "text": row["text"].partition("\n")[0]}, ensure_ascii=False) + "\n"
                               for row in rows))


def _stanzas(path: Path):
    text = subprocess.run(["lz4cat", str(path)], check=True, capture_output=True, text=True).stdout
    for block in text.split("\n\n"):
        fields, name = {}, None
        for line in block.splitlines():
            if line.startswith(" ") and name:
                fields[name] += "\n" + line
            elif ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        if fields:
            yield fields


def _long_description(value: str) -> str:
    """Debian's description format: first line the summary, then ' ' lines, ' .' for a blank one."""
    lines = value.split("\n")
    body = [line[1:] if line.startswith(" ") else line for line in lines[1:]]
    paragraphs = " ".join("\n" if line.strip() == "." else line.strip() for line in body)
    return lines[0].strip() + ".\n" + "\n".join(p.strip() for p in paragraphs.split("\n") if p.strip())


def build() -> list[dict]:
    translations = {f["Description-md5"]: f["Description-en"]
                    for f in _stanzas(LISTS / f"{RELEASE}_i18n_Translation-en.lz4")}
    by_source: dict[tuple, dict] = {}
    for package in _stanzas(LISTS / f"{RELEASE}_binary-amd64_Packages.lz4"):
        section = package.get("Section", "")
        description = translations.get(package.get("Description-md5", ""))
        if section not in SECTIONS or not description or package["Package"].endswith(("-dbg", "-doc")):
            continue
        source = package.get("Source", package["Package"]).split()[0]
        key = (section, source)
        if key not in by_source or package["Package"] < by_source[key]["package"]:
            by_source[key] = {"package": package["Package"], "text": _long_description(description),
                              "label": section}
    rows = []
    rng = random.Random(SEED)
    for section in SECTIONS:
        members = sorted((r for (s, _), r in by_source.items() if s == section), key=lambda r: r["package"])
        rows += sorted(rng.sample(members, min(PER_CLASS, len(members))), key=lambda r: r["package"])
    return rows


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else SNAPSHOT
    rows = build()
    with gzip.GzipFile(out, "wb", mtime=0) as handle:
        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode())
    print(f"{out}: {len(rows)} descriptions in {len(SECTIONS)} sections")


if __name__ == "__main__":
    main()
