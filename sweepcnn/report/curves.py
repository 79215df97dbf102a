"""ROC and precision-recall curves for any number of classes (scikit-learn): one class against the rest for each
class with test images of it and of other classes, and their micro average (every (image, class) pair as one
binary decision) and macro average (the mean of the per-class curves and scores)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MICRO, MACRO = "micro avg", "macro avg"


@dataclass
class Curves:
    """Per curve name (a class, MICRO or MACRO): ROC (fpr, tpr), precision-recall (recall, precision), AUC, AP."""

    roc: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    pr: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    auc: dict[str, float] = field(default_factory=dict)
    ap: dict[str, float] = field(default_factory=dict)

    def rows(self, which: str) -> list[list]:
        """The curves as table rows [name, x, y] (which: "roc" or "pr")."""
        curves = self.roc if which == "roc" else self.pr
        return [[name, float(x), float(y)] for name, (xs, ys) in curves.items() for x, y in zip(xs, ys)]


def one_vs_rest(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> Curves:
    """The curves of the predicted probabilities `probs` [N, K] for the true `labels` [N]; empty when the test split
    holds a single class (no curve is defined)."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    truth = np.eye(len(classes), dtype=int)[labels]
    scored = [c for c in range(len(classes)) if 0 < truth[:, c].sum() < len(labels)]
    curves = Curves()
    if not scored:
        return curves
    for c in scored:
        fpr, tpr, _ = roc_curve(truth[:, c], probs[:, c])
        precision, recall, _ = precision_recall_curve(truth[:, c], probs[:, c], drop_intermediate=True)
        name = classes[c]
        curves.roc[name], curves.pr[name] = (fpr, tpr), (recall, precision)
        curves.auc[name], curves.ap[name] = float(auc(fpr, tpr)), float(average_precision_score(truth[:, c],
                                                                                                  probs[:, c]))
    fpr, tpr, _ = roc_curve(truth[:, scored].ravel(), probs[:, scored].ravel())
    # drop_intermediate: the points a plot shows (W&B tables stop at 200,000 rows: 10k images x 10 classes had ~1M)
    precision, recall, _ = precision_recall_curve(truth[:, scored].ravel(), probs[:, scored].ravel(),
                                                  drop_intermediate=True)
    curves.roc[MICRO], curves.pr[MICRO] = (fpr, tpr), (recall, precision)
    curves.auc[MICRO] = float(auc(fpr, tpr))
    curves.ap[MICRO] = float(average_precision_score(truth[:, scored], probs[:, scored], average="micro"))
    names = [classes[c] for c in scored]
    grid = np.unique(np.concatenate([curves.roc[n][0] for n in names]))
    curves.roc[MACRO] = (grid, np.mean([np.interp(grid, *curves.roc[n]) for n in names], axis=0))
    recall_grid = np.linspace(0, 1, 101)  # precision_recall_curve's recall decreases: reversed for interp
    curves.pr[MACRO] = (recall_grid, np.mean([np.interp(recall_grid, r[::-1], p[::-1])
                                              for r, p in (curves.pr[n] for n in names)], axis=0))
    curves.auc[MACRO] = float(np.mean([curves.auc[n] for n in names]))
    curves.ap[MACRO] = float(np.mean([curves.ap[n] for n in names]))
    return curves
