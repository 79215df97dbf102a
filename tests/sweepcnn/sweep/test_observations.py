from sweepcnn.sweep.observations import observations
from sweepcnn.sweep.trials import Sweep, Trial


def test_interrupted_trials_are_named_as_resumable():
    trials = [Trial(1, "a", "finished", 0.5, {"lr": 0.1}), Trial(2, "b", "interrupted", 0.25, {"lr": 0.01}),
              Trial(3, "c", "interrupted", None, {"lr": 0.001})]
    lines = observations(Sweep("sweep", "val_acc", True, ["lr"], {}, trials), [], [])
    assert "2 trials interrupted (resumed when the sweep runs again): #2 (val_acc 0.25), #3 (no val_acc)." in lines
