"""A short end-to-end run on a real photo subset (../shared/data/imagenette; skipped when absent)."""
import json

import pytest

from tests.helpers import train


@pytest.mark.slow
def test_short_run_on_imagenette_subset_beats_chance(tmp_path, imagenette):
    train(f"--data={imagenette}", "--max_images_per_class=40", "--input_size=64", "--epochs=4", "--test",
          "--base_filters=16", "--learning_rate=3e-3", f"--out_dir={tmp_path}", "--run_name=r", "--deterministic")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    assert len(split["classes"]) == 10 and len(split["test"]) == 400 and split["skipped"] == []
    assert len(split["train"]) == 320 and len(split["val"]) == 80
    # chance is 0.10; 400 test images put 0.16 about four standard errors above it
    assert summary["test_acc"] > 0.16, summary
