"""What each runtime extra adds to an install: the packages pip would add to the core's, and their size on disk.

pip resolves the core (``.``) and each extra (``.[executorch]`` …) with ``--dry-run --ignore-installed`` against
``constraints.txt``; the extra's packages are those the core does not bring. Sizes are the installed files of those
distributions in the running environment (their ``RECORD``), so run it from a venv that has the ``runtimes`` extra.

Usage:
    python benchmarks/extra_sizes.py [--extras executorch,litert,ncnn,runtimes]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolved(requirement: str) -> set[str]:
    """The distributions pip would install for ``requirement`` into an empty environment (torch pinned)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
        command += ["--report", str(report), "-c", str(ROOT / "constraints.txt"), "torch==2.14.1", requirement]
        subprocess.run(command, check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
        return {_canonical(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}


def installed_bytes(name: str) -> int:
    """Bytes of ``name``'s installed files in this environment."""
    files = importlib.metadata.distribution(name).files or []
    return sum(path.stat().st_size for path in (file.locate() for file in files) if Path(path).is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="executorch,litert,ncnn,runtimes")
    args = parser.parse_args()
    core = resolved(".")
    print("| extra | packages added | installed size | largest |\n|---|---|---|---|")
    for extra in args.extras.split(","):
        added = {name: installed_bytes(name) for name in resolved(f".[{extra}]") - core}
        largest = sorted(added, key=added.get, reverse=True)[:3]
        sizes = ", ".join(f"{name} {added[name] / 1e6:.0f} MB" for name in largest)
        print(f"| `{extra}` | {len(added)} | {sum(added.values()) / 1e6:,.0f} MB | {sizes} |")


if __name__ == "__main__":
    main()
