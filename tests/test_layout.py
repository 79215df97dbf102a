"""The package layout docs/layout.md describes: one import package, parts that plug in, short files,
tests that mirror the package."""
import ast
import os
import subprocess
import sys
import tomllib

import pytest

from tests.helpers import ROOT

SOURCES = sorted(p for d in ("sweepcnn", "part_a", "part_b", "bench") for p in (ROOT / d).rglob("*.py"))


def imported_modules(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_top_level_core_package():
    assert not (ROOT / "core").exists()
    assert '"core"' not in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("path", [p for p in SOURCES if p.is_relative_to(ROOT / "sweepcnn")],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_shared_package_never_imports_a_part(path):
    parts = {m for m in imported_modules(path) if m.split(".")[0] in ("part_a", "part_b")}
    assert not parts, f"{path.relative_to(ROOT)} imports {parts}"


def _entry_point(name: str) -> list[str]:
    """python's arguments that run the console entry point `name` as pyproject.toml declares it."""
    module, function = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][name].split(":")
    return ["-c", f"from {module} import {function}; {function}()"]


# the commands that parse their flags with argparse: (what --help's usage names, python's arguments that start it)
ARGPARSE_COMMANDS = [("python -m sweepcnn.report", ["-m", "sweepcnn.report"]),
                     ("python -m sweepcnn.report", _entry_point("sweepcnn-report")),
                     ("python -m sweepcnn.predict", ["-m", "sweepcnn.predict"]),
                     ("python part_b/predict.py", ["part_b/predict.py"])]


@pytest.mark.parametrize("prog, args", ARGPARSE_COMMANDS, ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_argparse_commands_print_help_without_importing_torch_or_wandb(prog, args):
    """Their work, and torch with it, loads after the flags are parsed: --help prints at once (as the parts' does,
    tests/sweepcnn/test_config.py)."""
    proc = subprocess.run([sys.executable, *args, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: {prog} "), proc.stderr[-3000:]
    heavy = imported & {"torch", "torchvision", "wandb", "numpy"}
    assert "argparse" in imported and not heavy, f"--help imported {sorted(heavy)}"


def test_sub_package_inits_are_empty():
    inits = [p for p in (ROOT / "sweepcnn").rglob("__init__.py") if p.parent != ROOT / "sweepcnn"]
    assert inits and all(p.read_text().strip() == "" for p in inits), inits


def test_no_source_file_over_450_lines():
    long = {p.relative_to(ROOT).as_posix(): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long


def test_tests_mirror_the_package():
    """Every module of sweepcnn/<sub>/ and of the parts has a test folder of its sub-package, which has tests."""
    for package in [p for p in (ROOT / "sweepcnn").iterdir() if (p / "__init__.py").exists()] + \
            [ROOT / "part_a", ROOT / "part_b"]:
        folder = ROOT / "tests" / package.relative_to(ROOT)
        assert list(folder.glob("test_*.py")), f"no tests in {folder.relative_to(ROOT)} for {package.name}"


@pytest.mark.slow
def test_import_sweepcnn_from_an_installed_checkout(tmp_path):
    """From another folder, as an installed package (pip install -e .), not through the current directory."""
    proc = subprocess.run([sys.executable, "-c", "import sweepcnn, sweepcnn.sweep.runner, part_a.part; "
                           "print(sweepcnn.__file__)"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(ROOT / "sweepcnn" / "__init__.py")
