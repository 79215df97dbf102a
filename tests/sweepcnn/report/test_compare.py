import subprocess
import sys

from tests.helpers import ROOT


def test_help_states_the_default_output_folder():
    out = subprocess.run([sys.executable, "-m", "sweepcnn.report.compare", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps the help
    assert "default: PATH/compare when the one PATH given is a folder of runs, else runs/compare" in text
