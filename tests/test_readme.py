import re

from tests.helpers import ROOT
from part_a.train import OPTIONS as PART_A
from part_b.finetune import OPTIONS as PART_B


def documented(name: str, page: str) -> bool:
    text = (ROOT / "docs" / page).read_text()
    return f"--{name}`" in text or f"--{name} " in text


def test_every_flag_is_documented_on_its_page():
    """Part A's flags (the ones both parts share among them) in docs/part-a.md, Part B's own in docs/part-b.md."""
    missing = [f"{name} (docs/part-a.md)" for name in PART_A if not documented(name, "part-a.md")]
    missing += [f"{name} (docs/part-b.md)" for name in PART_B.keys() - PART_A.keys()
                if not documented(name, "part-b.md")]
    assert not missing, f"flags missing from their docs page: {missing}"


def test_readme_starts_with_the_two_setup_commands():
    first_block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1).splitlines()
    assert len(first_block) == 2
    assert first_block[0].startswith("pip install") and "-r requirements.txt" in first_block[0]
    assert first_block[1] == "python -m pytest -q"
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text()


def test_readme_and_tests_page_give_the_fast_subset_command():
    for page in (ROOT / "README.md", ROOT / "docs" / "tests.md"):
        assert 'python -m pytest -q -m "not slow"' in page.read_text(), page.name
