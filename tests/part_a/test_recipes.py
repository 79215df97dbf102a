"""part_a/recipes/photos.yaml is a training recipe that train.py reads (no architecture, epochs, input size or
data), and the two CNN sweeps agree with it: sweeps/cnn.yaml fixes the new knobs at its values, sweeps/cnn_tricks.yaml
searches them."""
import yaml

from sweepcnn.config import parse_args
from sweepcnn.sweep.spec import swept_names
from sweepcnn.options import EMA_OPTIONS, METRIC, MIX_OPTIONS, TTA_OPTIONS
from part_a.cnn_config import MODEL_OPTIONS
from part_a.train import OPTIONS
from tests.helpers import ROOT

RECIPE = ROOT / "part_a" / "recipes" / "photos.yaml"
NEW_KNOBS = {*MIX_OPTIONS, *EMA_OPTIONS, *TTA_OPTIONS}


def load(path):
    return yaml.safe_load(path.read_text())


def test_the_recipe_sets_training_keys_only_and_flags_override_it():
    recipe = load(RECIPE)
    assert set(recipe) <= set(OPTIONS)
    assert not set(recipe) & {*MODEL_OPTIONS, "epochs", "data", "seed"}
    cfg, explicit = parse_args([f"--config={RECIPE}", "--learning_rate=0.01"], OPTIONS)
    assert explicit == set(recipe) | {"learning_rate"} and cfg["learning_rate"] == 0.01
    assert all(cfg[k] == v for k, v in recipe.items() if k != "learning_rate")


def test_cnn_sweep_fixes_the_new_knobs_at_the_recipe_and_the_tricks_sweep_searches_them():
    recipe = load(RECIPE)
    cfg, _ = parse_args([f"--config={RECIPE}"], OPTIONS)
    fixed = load(ROOT / "sweeps" / "cnn.yaml")["parameters"]
    for key in NEW_KNOBS:
        assert fixed.get(key, {"value": OPTIONS[key].default}) == {"value": cfg[key]}, key
    assert NEW_KNOBS & set(recipe) <= set(fixed)
    tricks = load(ROOT / "sweeps" / "cnn_tricks.yaml")
    assert tricks["metric"] == {"name": METRIC, "goal": "maximize"} and tricks["program"] == "part_a/train.py"
    assert set(tricks["parameters"]) <= set(OPTIONS)
    assert {"mixup", "cutmix", "ema", "ema_decay", "tta", "learning_rate", "label_smoothing"} <= \
           set(swept_names(tricks))
