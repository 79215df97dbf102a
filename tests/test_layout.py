"""The package layout docs/layout.md describes: one import package, parts that plug in, short files,
tests that mirror the package."""
import ast
import subprocess
import sys

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
