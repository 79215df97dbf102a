import re

from tests.helpers import ROOT
from part_a.train import OPTIONS as PART_A
from part_b.finetune import OPTIONS as PART_B


def test_every_flag_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in {**PART_A, **PART_B} if f"--{name}`" not in readme and f"--{name} " not in readme]
    assert not missing, f"flags missing from README.md: {missing}"


def test_readme_starts_with_the_two_setup_commands():
    first_block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1).splitlines()
    assert len(first_block) == 2
    assert first_block[0].startswith("pip install") and "-r requirements.txt" in first_block[0]
    assert first_block[1] == "python -m pytest -q"
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text()
