from sweepcnn.sweep.analysis import ParamStat
from sweepcnn.sweep.observations import observations
from sweepcnn.sweep.trials import Sweep, Trial


def test_interrupted_trials_are_named_as_resumable():
    trials = [Trial(1, "a", "finished", 0.5, {"lr": 0.1}), Trial(2, "b", "interrupted", 0.25, {"lr": 0.01}),
              Trial(3, "c", "interrupted", None, {"lr": 0.001})]
    lines = observations(Sweep("sweep", "val_acc", True, ["lr"], {}, trials), [], [])
    assert "2 trials interrupted (resumed when the sweep runs again): #2 (val_acc 0.25), #3 (no val_acc)." in lines


def _stat(feature: str, correlation: float, encoding: str = "number") -> ParamStat:
    return ParamStat(feature, feature.split("=")[0], encoding, correlation, None, "")


def test_parameters_that_tie_for_the_strongest_correlation_are_all_named():
    trials = [Trial(1, "a", "finished", 0.5, {}), Trial(2, "b", "finished", 0.75, {})]
    sweep = Sweep("sweep", "val_acc", True, ["lr", "batch_size", "act"], {}, trials)
    stats = [_stat("lr", 0.8, "log10"), _stat("batch_size", -0.8004), _stat("act=relu", 0.3, "one-hot")]
    lines = observations(sweep, stats, [])
    assert ("2 parameters tie for the strongest correlation with val_acc (size 0.80): batch_size -0.80 (higher "
            "batch_size goes with lower val_acc); lr (log scale) +0.80 (higher lr goes with higher val_acc).") in lines
    assert not any("has the strongest" in line for line in lines)
    # the two one-hot columns of one two-valued parameter always tie: not a tie between parameters
    lines = observations(sweep, [_stat("act=relu", 0.6, "one-hot"), _stat("act=gelu", -0.6, "one-hot")], [])
    assert ("act=relu has the strongest correlation with val_acc: +0.60 (trials with act=relu have higher val_acc)."
            in lines)
