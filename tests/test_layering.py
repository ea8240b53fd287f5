"""The import-linter contracts in pyproject.toml hold on the tree, and break when a forbidden import appears.

The graph is built from the source tree, where ``models/`` (installed as ``deployforge.models``) is a sibling
of ``deployforge/``; the contracts therefore name it ``models``. lint-imports puts its working directory
first on ``sys.path``, so each run happens in the directory that holds the two packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("deployforge", "models")


def contract_names() -> dict[str, str]:
    """``contract id -> name`` (as lint-imports prints it) from pyproject.toml."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    return {contract["id"]: contract["name"] for contract in config["contracts"]}


CONTRACTS = contract_names()


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """Run lint-imports with the repository's contracts on the packages found in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(cwd), "COLUMNS": "300"}  # wide: contract names stay on one line
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(PYPROJECT)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def verdicts(output: str) -> dict[str, str]:
    """``contract name -> "KEPT" | "BROKEN"`` as printed in the summary (a count of ignored imports may follow)."""
    found = {}
    for name in CONTRACTS.values():
        lines = [line for line in output.splitlines() if line.startswith(name)]
        assert lines, (name, output)
        found[name] = lines[0][len(name) :].split()[0]
    return found


def test_the_six_rules_have_contracts():
    assert set(CONTRACTS) == {
        "blocks-below-families",
        "models-below-pipeline",
        "stages-pure-torch",
        "interpreter-standalone",
        "cli-over-api",
        "cli-only-ui",
    }


def test_contracts_hold_on_the_tree():
    assert LINT_IMPORTS.is_file(), "lint-imports is missing: install the test extra (pip install -e '.[test]')"
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(verdicts(result.stdout).values()) == {"KEPT"}
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """A pristine copy of both packages, laid out as in the repository."""
    root = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_copy_is_what_lint_imports_reads(tree_copy):
    """In the copy's directory, both packages resolve to the copy (not to the editable install)."""
    probe = (
        "import importlib.util, os, sys; sys.path.insert(0, os.getcwd()); "  # as lint-imports does
        "print(importlib.util.find_spec('deployforge').origin); print(importlib.util.find_spec('models').origin)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tree_copy,
        env={**os.environ, "PYTHONPATH": str(tree_copy)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    origins = [Path(line) for line in result.stdout.split()]
    assert origins == [tree_copy / "deployforge" / "__init__.py", tree_copy / "models" / "__init__.py"]

    clean = lint_imports(tree_copy)
    assert clean.returncode == 0, clean.stdout + clean.stderr


PLANTED = [
    # (file in the copy, line appended, contract that must break)
    ("models/blocks/conv_norm.py", "from .. import fastvit  # noqa", "blocks-below-families"),
    ("models/mobileone.py", "import deployforge.parity  # noqa", "models-below-pipeline"),
    ("models/fastvit.py", "from deployforge.registry import get_spec  # noqa", "models-below-pipeline"),
    ("deployforge/trace.py", "import onnx  # noqa", "stages-pure-torch"),
    ("deployforge/reparam.py", "import coremltools  # noqa", "stages-pure-torch"),
    ("deployforge/mlprogram/ops/conv.py", "import torch  # noqa", "interpreter-standalone"),
    ("deployforge/mlprogram/blob.py", "from deployforge import manifest  # noqa", "interpreter-standalone"),
    ("deployforge/cli/export.py", "from deployforge import pipeline  # noqa", "cli-over-api"),
    ("deployforge/fuse.py", "import rich  # noqa", "cli-only-ui"),
    # a module added later is covered without editing the contract
    ("deployforge/brand_new.py", "import typer  # noqa", "cli-only-ui"),
    ("deployforge/pipeline.py", "from .cli import render  # noqa", "cli-only-ui"),
]


@pytest.mark.parametrize(("relative", "line", "contract"), PLANTED, ids=[f"{p[2]}:{p[0]}" for p in PLANTED])
def test_a_forbidden_import_breaks_its_contract(tree_copy, tmp_path, relative, line, contract):
    root = tmp_path / "tree"
    shutil.copytree(tree_copy, root)
    target = root / relative
    text = target.read_text() if target.exists() else ""
    target.write_text(text + "\n" + line + "\n")

    result = lint_imports(root)
    assert result.returncode != 0, result.stdout
    broken = {name for name, verdict in verdicts(result.stdout).items() if verdict == "BROKEN"}
    assert broken == {CONTRACTS[contract]}, result.stdout
    module = relative.removesuffix(".py").replace("/", ".")
    assert module in result.stdout, result.stdout  # the report names the offending module
