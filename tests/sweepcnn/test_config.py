import subprocess
import sys

import pytest

from sweepcnn.config import Option, grouped, load_yaml_config, parse_args, parse_value
from sweepcnn.errors import UserError
from tests.helpers import ROOT

OPTIONS = {
    "epochs": Option(10, "epochs", "int", min=0),
    "learning_rate": Option(1e-3, "lr", "float", min=1e-12),
    "batch_norm": Option(True, "bn", "bool"),
    "test": Option(False, "test", "bool"),
    "activation": Option("relu", "act", choices=("relu", "gelu")),
    "filter_counts": Option(None, "counts", "ints", min=1, nullable=True, length=5),
    "augmentations": Option(["hflip"], "augs", "strs", choices=("hflip", "vflip", "rotate")),
}


def test_defaults_and_explicit_keys():
    cfg, explicit = parse_args([], OPTIONS)
    assert cfg == {name: opt.default for name, opt in OPTIONS.items()} and explicit == set()


def test_flag_forms_types_and_lists():
    cfg, explicit = parse_args(["--epochs=3", "--learning_rate", "1e-4", "--batch_norm=false", "--test",
                                "--filter_counts=8,16,32,64,128", "--augmentations", "vflip,rotate",
                                "--activation=gelu"], OPTIONS)
    assert cfg["epochs"] == 3 and cfg["learning_rate"] == 1e-4 and cfg["batch_norm"] is False
    assert cfg["test"] is True and cfg["filter_counts"] == [8, 16, 32, 64, 128]
    assert cfg["augmentations"] == ["vflip", "rotate"] and cfg["activation"] == "gelu"
    assert explicit == {"epochs", "learning_rate", "batch_norm", "test", "filter_counts", "augmentations",
                        "activation"}


def test_bare_bool_followed_by_flag_and_dashes_in_names():
    cfg, _ = parse_args(["--test", "--batch-norm", "no", "--epochs", "2"], OPTIONS)
    assert cfg["test"] is True and cfg["batch_norm"] is False and cfg["epochs"] == 2


def test_wandb_internal_arguments_are_ignored():
    cfg, explicit = parse_args(["--_wandb_run=abc", "--epochs=1"], OPTIONS)
    assert cfg["epochs"] == 1 and explicit == {"epochs"}


@pytest.mark.parametrize("argv, fragment", [
    (["--epochs=-1"], "--epochs: -1 is out of range"),
    (["--epochs=2.5"], "--epochs: expected an integer"),
    (["--epochs"], "--epochs: a value is required"),
    (["--learning_rate=abc"], "--learning_rate: expected a number"),
    (["--learning_rate=nan"], "--learning_rate: expected a number"),
    (["--batch_norm=maybe"], "--batch_norm: expected true or false"),
    (["--activation=rleu"], "did you mean relu?"),
    (["--filter_counts=1,2,3"], "(5 of them) (or none), got 3 value(s)"),
    (["--augmentations=hflip,blur"], "--augmentations: 'blur' is not valid"),
    (["--epoch=3"], "unknown option 'epoch' (did you mean --epochs?)"),
    (["epochs=3"], "unexpected argument 'epochs=3'"),
])
def test_bad_values_name_the_flag(argv, fragment):
    with pytest.raises(UserError) as err:
        parse_args(argv, OPTIONS)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_yaml_config_with_cli_override(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text("epochs: 7\nactivation: gelu\nfilter_counts: [4, 8, 16, 32, 64]\nlearning_rate: 1e-2\n"
                    "batch_norm: {value: false}\n_wandb: {desc: internal}\n")
    cfg, explicit = parse_args(["--config", str(path), "--epochs=2"], OPTIONS)
    assert cfg["epochs"] == 2 and cfg["activation"] == "gelu" and cfg["filter_counts"] == [4, 8, 16, 32, 64]
    assert cfg["learning_rate"] == 0.01 and cfg["batch_norm"] is False
    assert {"epochs", "activation", "filter_counts", "learning_rate", "batch_norm"} <= explicit


def test_yaml_config_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_yaml_config(tmp_path / "missing.yaml", OPTIONS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    with pytest.raises(UserError, match=r"bad.yaml.*unknown option 'epochz'"):
        load_yaml_config(bad, OPTIONS)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_yaml_config(bad, OPTIONS)


def test_nullable_and_bool_values_from_yaml():
    assert parse_value("filter_counts", OPTIONS["filter_counts"], "none") is None
    assert parse_value("batch_norm", OPTIONS["batch_norm"], True) is True
    with pytest.raises(UserError):
        parse_value("epochs", OPTIONS["epochs"], True)  # a YAML boolean is not an integer


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as done:
        parse_args(["--help"], OPTIONS, prog="train.py", description="demo")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(f"--{name}=" in out for name in OPTIONS)


def test_help_lists_flags_under_their_group_headings(capsys):
    options = {**grouped("data", {"augmentations": OPTIONS["augmentations"]}),
               **grouped("training", {"epochs": OPTIONS["epochs"]}), "test": OPTIONS["test"],
               **grouped("data", {"batch_norm": OPTIONS["batch_norm"]})}
    with pytest.raises(SystemExit):
        parse_args(["--help"], options, prog="train.py", description="demo")
    lines = capsys.readouterr().out.splitlines()
    headings = [line for line in lines if line and not line.startswith(" ") and line.endswith(":")]
    assert headings == ["options:", "data:", "training:"]  # ungrouped first, then groups in order of appearance
    flags = [line.split()[0].split("=")[0] for line in lines if line.startswith("  --")]
    assert flags == ["--config", "--test", "--augmentations", "--batch_norm", "--epochs"]
    assert parse_args(["--epochs=3"], options)[0] == {"augmentations": ["hflip"], "epochs": 3, "test": False,
                                                       "batch_norm": True}  # grouping changes nothing else


def test_none_as_a_choice_is_a_value_not_null():
    opt = Option("cosine", "schedule", choices=("none", "cosine"))
    assert parse_value("scheduler", opt, "none") == "none"
    with pytest.raises(UserError, match="a value is required"):
        parse_value("scheduler", opt, None)


def test_help_piped_into_a_reader_that_stops_early_is_no_traceback():
    proc = subprocess.Popen([sys.executable, "part_a/train.py", "--help"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # as `| head` does once it has its lines
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in stderr, stderr


def test_help_wins_over_a_bad_flag_anywhere_in_argv(capsys):
    with pytest.raises(SystemExit) as done:
        parse_args(["--bogus=1", "--epochs", "3", "-h"], OPTIONS, prog="train.py", description="demo")
    assert done.value.code == 0 and "--learning_rate=" in capsys.readouterr().out


def test_h_as_a_flags_value_is_that_value_not_a_request_for_help():
    options = {**OPTIONS, "notes": Option(None, "notes", nullable=True)}
    assert parse_args(["--notes", "-h", "--test"], options)[0]["notes"] == "-h"
    with pytest.raises(SystemExit):  # a bool flag does not take it: help
        parse_args(["--test", "-h"], options)


@pytest.mark.parametrize("script", ["part_a/train.py", "part_b/finetune.py"])
def test_a_parts_help_imports_neither_torch_nor_wandb(script):
    """--help is the first thing a newcomer runs: it prints every flag without waiting for torch to import."""
    code = ("import runpy, sys\n"
            f"sys.argv = [{script!r}, '--help']\n"
            "try:\n"
            f"    runpy.run_path({script!r}, run_name='__main__')\n"
            "except SystemExit as done:\n"
            "    assert done.code == 0, done.code\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'wandb', 'numpy') if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stderr.strip().splitlines()[-1] == "[]", out.stderr
    assert "--learning_rate=FLOAT" in out.stdout and "--wandb_mode=STR" in out.stdout
