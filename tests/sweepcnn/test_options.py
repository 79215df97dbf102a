"""Each option is read where its table says, so a reader goes from a flag to its use in one hop.

The shared package declares its flags in sweepcnn/options.py, one table per module that reads them (READERS), so that
`--help` imports no torch; a part declares its own in part_a/cnn_config.py and part_b/options.py, read by the
part's modules. Read from the sources with `ast`, nothing is imported. A declaration is a dict
entry `"name": Option(...)`. A read is `cfg["name"]` or `cfg.get("name")` where the receiver is a name spelled
`cfg`, `config` or `*_cfg` (the run config under the names this code base gives it; other dicts such as a
checkpoint's `state["model"]` are not config reads). Checked:
- every option is read by its owner: the module READERS names for its table, the part for a part's options module,
  else the module that declares it;
- no module under sweepcnn/ reads an option owned by another module, except those in CROSS_READS.
sweepcnn/report/ is left out of the second check: it reads the saved config.yaml of a finished run, a record, not
the options of the process it runs in.
"""
from __future__ import annotations

import ast

from tests.helpers import ROOT

PACKAGES = ("sweepcnn", "part_a", "part_b")
RECORD_READERS = ("sweepcnn/report/",)
SHARED_OPTIONS = "sweepcnn/options.py"
# each table of sweepcnn/options.py: the module that reads its options
READERS = {
    "DATA_OPTIONS": "sweepcnn/data/datasets.py",
    "DEVICE_DATA_OPTIONS": "sweepcnn/data/device_data.py",
    "AUGMENT_OPTIONS": "sweepcnn/data/augment.py",
    "OPTIM_OPTIONS": "sweepcnn/train/optim.py",
    "EMA_OPTIONS": "sweepcnn/train/ema.py",
    "MIX_OPTIONS": "sweepcnn/train/mixing.py",
    "TTA_OPTIONS": "sweepcnn/train/tta.py",
    "ENGINE_OPTIONS": "sweepcnn/train/engine.py",
    "LR_FIND_OPTIONS": "sweepcnn/train/lr_find.py",
    "RUN_FOLDER_OPTIONS": "sweepcnn/train/run_dir.py",
    "PROCESS_OPTIONS": "sweepcnn/train/startup.py",
    "DISTRIBUTED_OPTIONS": "sweepcnn/distributed.py",
    "RUN_OPTIONS": "sweepcnn/train/runner.py",
    "TRACKING_OPTIONS": "sweepcnn/tracking.py",
    "REPORT_OPTIONS": "sweepcnn/report/run_report.py",
}
# a part's options module: the part whose modules read its options
PART_OPTIONS = {"part_a/cnn_config.py": "part_a/", "part_b/options.py": "part_b/"}
# (reading module, option): why it may read an option declared elsewhere
CROSS_READS = {
    ("sweepcnn/train/startup.py", "seed"): "seeds the model's initialisation, before build() and fit",
    ("sweepcnn/train/startup.py", "split_seed"): "checks a resumed run's split.json against the data",
    ("sweepcnn/train/runner.py", "split_seed"): "records the split's seed in split.json",
    ("sweepcnn/train/startup.py", "num_classes"): "sets it from the data for a part that declares it",
    ("sweepcnn/train/startup.py", "device"): "phase 1 checks the device before anything is written",
    ("sweepcnn/train/runner.py", "device"): "under torchrun, the process group joins on the run's device (its "
                                             "backend: NCCL on CUDA, gloo on CPU) before phase 1",
    ("sweepcnn/distributed.py", "batch_size"): "--batch_size is the global batch: it must divide over the ranks "
                                               "when the process group starts",
    ("sweepcnn/train/startup.py", "epochs"): "phase 1: --test with --epochs 0, a finished run with no new epoch",
    ("sweepcnn/train/startup.py", "patience"): "phase 1: a finished (early-stopped) run with nothing to do",
    ("sweepcnn/train/startup.py", "test"): "phase 1: --test with --epochs 0 is refused before anything is written",
    ("sweepcnn/train/optim.py", "epochs"): "a schedule spans its phase: fit hands it the phase's epochs",
    ("sweepcnn/train/optim.py", "monitor"): "ReduceLROnPlateau follows the metric that selects the best epoch",
    ("sweepcnn/train/lr_find.py", "batch_size"): "the LR range test stands in for fit (ModelSpec.run) and trains "
                                                 "with its batch size, seed and loss",
    ("sweepcnn/train/lr_find.py", "seed"): "as batch_size",
    ("sweepcnn/train/lr_find.py", "label_smoothing"): "as batch_size",
    ("sweepcnn/tracking.py", "monitor"): "the W&B summary holds the best epoch after every epoch, selected as the "
                                         "engine selects best.pt (engine.Progress)",
    ("sweepcnn/tracking.py", "min_delta"): "as monitor",
}
# (declaring module, option): why its declaring module does not read it
UNREAD = {
    ("sweepcnn/train/lr_find.py", "lr_find"): "it picks ModelSpec.run, which is the part's choice "
                                              "(part_b/part.py); declared with the test's other flags",
}


def _modules() -> dict[str, ast.Module]:
    files = sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))
    return {path.relative_to(ROOT).as_posix(): ast.parse(path.read_text(), str(path)) for path in files}


def _is_config(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and (node.id in ("cfg", "config") or node.id.endswith("_cfg"))


def declared(tree: ast.AST) -> set[str]:
    return {key.value for node in ast.walk(tree) if isinstance(node, ast.Dict)
            for key, value in zip(node.keys, node.values)
            if isinstance(key, ast.Constant) and isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name) and value.func.id == "Option"}


def tables(tree: ast.Module) -> dict[str, set[str]]:
    """The options each top-level `NAME = ...` of a module declares, by NAME."""
    return {node.targets[0].id: declared(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and declared(node.value)}


def owners(modules: dict[str, ast.Module]) -> dict[tuple[str, str], str]:
    """(declaring module, option) -> the module that reads it, or a part's folder ("part_b/")."""
    owner = {}
    for module, tree in modules.items():
        if module == SHARED_OPTIONS:
            for table, names in tables(tree).items():
                owner |= {(module, name): READERS[table] for name in names}
        else:
            owner |= {(module, name): PART_OPTIONS.get(module, module) for name in declared(tree)}
    return owner


def config_reads(tree: ast.Module) -> set[str]:
    reads = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_config(node.value) and isinstance(node.slice, ast.Constant):
            reads.add(node.slice.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and _is_config(node.func.value) and node.args and isinstance(node.args[0], ast.Constant)):
            reads.add(node.args[0].value)
    return {name for name in reads if isinstance(name, str)}


def test_the_checks_see_declarations_and_reads():
    tree = ast.parse('A = {"x": Option(1, "h"), "y": 2}\ndef f(cfg, phase_cfg, state):\n'
                     '    return cfg["x"], phase_cfg.get("z"), state["w"], config["v"]\n')
    assert declared(tree) == {"x"}
    assert config_reads(tree) == {"x", "z", "v"}


def test_every_table_of_the_shared_options_names_its_reader():
    modules = _modules()
    assert set(tables(modules[SHARED_OPTIONS])) == set(READERS)
    assert all(reader in modules for reader in READERS.values())


def test_every_option_is_read_by_its_owner():
    modules = _modules()
    reads = {module: config_reads(tree) for module, tree in modules.items()}
    unread = [(declaring, name, owner) for (declaring, name), owner in sorted(owners(modules).items())
              if (owner, name) not in UNREAD
              and not any(name in names for module, names in reads.items() if module.startswith(owner))]
    assert not unread, f"declared but not read by their owner: {unread}"


def test_shared_modules_read_only_their_own_options():
    modules = _modules()
    owned: dict[str, set[str]] = {}
    for (_, name), owner in owners(modules).items():
        owned.setdefault(name, set()).add(owner)
    foreign = []
    for module, tree in modules.items():
        if not module.startswith("sweepcnn/") or module.startswith(RECORD_READERS):
            continue
        foreign += [(module, name) for name in sorted(config_reads(tree))
                    if name in owned and module not in owned[name] and (module, name) not in CROSS_READS]
    assert not foreign, f"options read outside their owner: {foreign}"


def test_the_exceptions_are_still_needed():
    modules = _modules()
    owned = set(owners(modules).items())
    stale = [key for key in CROSS_READS if key[0] not in modules or key[1] not in config_reads(modules[key[0]])]
    stale += [key for key in UNREAD if not any(owner == key[0] and name == key[1] for (_, name), owner in owned)]
    assert not stale, f"exceptions that no longer apply: {stale}"
