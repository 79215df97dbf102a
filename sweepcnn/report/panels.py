"""The report's panels and tables for one model on the test split: predictions, metrics, interpretability."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sweepcnn.data.datasets import Data
from sweepcnn.report.curves import MACRO, MICRO, one_vs_rest
from sweepcnn.report.figures import save_figure
from sweepcnn.report.interpret import Layers, conv_layers, grad_cam, guided_backprop, module_name
from sweepcnn.report.plots import (confusion_figure, curves_figure, filters_figure, gradcam_figure, guided_figure,
                                   mistakes_figure, prediction_grid, roc_pr_figure, row_normalized)
from sweepcnn.report.predictions import Normalization, TestResults, grid_indices, highest_loss, predict, to_uint8
from sweepcnn.report.tables import write_csv
from sweepcnn.train.engine import Batches, place_model
from sweepcnn.train.tta import tta_mode

if TYPE_CHECKING:
    from matplotlib.figure import Figure


PREDICTION_COLUMNS = ("file", "true", "predicted", "confidence", "loss", "correct")


@dataclass
class Panel:
    """One figure of the report, saved as <out_dir>/<key>.png."""

    key: str  # file stem, and the W&B key report/<key>
    title: str
    caption: str
    path: Path


@dataclass
class Report:
    """What write_panels made: the panels, the tables (each also a CSV file) and the test metrics."""

    out_dir: Path
    classes: list[str]
    results: TestResults
    panels: list[Panel] = field(default_factory=list)
    tables: dict[str, tuple[list[str], list[list[Any]]]] = field(default_factory=dict)  # also written as CSV
    metrics: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, title: str, caption: str, fig: Figure) -> None:
        """Save `fig` as <key>.png and add it as a panel."""
        self.panels.append(Panel(key, title, caption, save_figure(fig, self.out_dir / f"{key}.png")))

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Keep the table and write it as <key>.csv."""
        self.tables[key] = (columns, rows)
        write_csv(self.out_dir / f"{key}.csv", columns, rows)


def write_panels(out_dir: Path, model: nn.Module, data: Data, normalization: Normalization, cfg: dict,
                 history: list[dict], layers: Layers | None = None) -> Report:
    """Every figure and table of the report for the test split, into out_dir. `layers`: the ones the model's part
    named (default: the first and last Conv2d). The test split is evaluated as training evaluated it (the model's
    device, the run's --amp, --channels_last, --tta and evaluation batch size), so the report's test accuracy is the
    summary's (a --channels_last run's model is converted, as fit converts it); gradients are computed in float32."""
    out_dir.mkdir(parents=True, exist_ok=True)
    device, amp, batches = place_model(model, {**cfg, "device": str(next(model.parameters()).device)},
                                       (list(normalization[0]), list(normalization[1])))
    was_training = model.training
    model.eval()
    try:
        results = predict(model, data.test, batches, amp, 2 * cfg["batch_size"], tta_mode(cfg))
        report = Report(out_dir, data.classes, results)
        _prediction_panels(report)
        _metric_panels(report)
        layers = layers or conv_layers(model)
        report.add("filters", "First-layer filters", "The kernels of the first convolution (for a ViT: the "
                   "patch embedding), each scaled to its own range.",
                   filters_figure(layers.first, module_name(model, layers.first)))
        if history:
            report.add("curves", "Training curves", "Loss and accuracy on the training and validation splits, "
                       "and the learning rate, per epoch (metrics.jsonl).", curves_figure(history))
        _interpretability_panels(report, model, layers, batches, normalization)
    finally:
        model.train(was_training)
    return report


def _prediction_panels(report: Report) -> None:
    r, classes = report.results, report.classes
    names, probs = r.images.names, r.probs.numpy().round(6).tolist()
    report.table("predictions", [*PREDICTION_COLUMNS, *probability_columns(classes)],
                 [[names[i], classes[int(r.labels[i])], classes[int(r.preds[i])], round(float(r.confidence[i]), 6),
                   round(float(r.losses[i]), 6), bool(r.preds[i] == r.labels[i]), *probs[i]]
                  for i in range(len(names))])
    report.add("predictions", "Test predictions", "Up to three test images of each of the first 10 classes (rows) with "
               "the true class, the predicted class and its probability; green when right, red when wrong.",
               prediction_grid(r, classes))
    worst = highest_loss(r)
    rows = report.tables["predictions"][1]
    report.table("mistakes", list(PREDICTION_COLUMNS), [rows[i][:len(PREDICTION_COLUMNS)] for i in worst])
    report.add("mistakes", "Highest-loss test images", "The test images with the largest cross-entropy: true and "
               "predicted class, the predicted probability and the loss (red: wrong).",
               mistakes_figure(r, classes, worst))


def probability_columns(classes: list[str]) -> list[str]:
    """The predictions table's probability columns, p_<class>."""
    return [f"p_{c}" for c in classes]


def _metric_panels(report: Report) -> None:
    from sklearn.metrics import classification_report, confusion_matrix

    r, classes = report.results, report.classes
    labels, preds = r.labels.numpy(), r.preds.numpy()
    counts = confusion_matrix(labels, preds, labels=list(range(len(classes))))
    report.table("confusion_matrix", ["true \\ predicted", *classes],
                 [[c, *map(int, row)] for c, row in zip(classes, counts)])
    report.table("confusion_matrix_normalized", ["true \\ predicted", *classes],
                 [[c, *(round(float(v), 6) for v in row)] for c, row in zip(classes, row_normalized(counts))])
    report.add("confusion_matrix", "Confusion matrix", "Test split: counts, and each row divided by the number of "
               "test images of its true class.", confusion_figure(counts, classes))
    per_class = classification_report(labels, preds, labels=list(range(len(classes))), target_names=classes,
                                      output_dict=True, zero_division=0)
    curves = one_vs_rest(labels, r.probs.numpy(), classes)
    weights = np.bincount(labels, minlength=len(classes))
    scored = [i for i, c in enumerate(classes) if c in curves.auc]
    weighted = {key: float(np.average([scores[classes[i]] for i in scored], weights=weights[scored])) if scored
                else None for key, scores in (("auc", curves.auc), ("ap", curves.ap))}
    averages = {"macro avg": {"auc": curves.auc.get(MACRO), "ap": curves.ap.get(MACRO)}, "weighted avg": weighted}
    rows = [[name, per_class[name]["precision"], per_class[name]["recall"], per_class[name]["f1-score"],
             *(averages[name][k] if name in averages else getattr(curves, k).get(name) for k in ("auc", "ap")),
             int(per_class[name]["support"])] for name in [*classes, "macro avg", "weighted avg"]]
    report.table("per_class", ["class", "precision", "recall", "f1", "auc", "ap", "support"],
                 [[row[0], *(None if v is None else round(v, 6) for v in row[1:6]), row[6]] for row in rows])
    report.metrics.update(test_images=len(labels), test_acc=float((labels == preds).mean()),
                          test_loss=float(r.losses.mean()), macro_f1=per_class["macro avg"]["f1-score"],
                          weighted_f1=per_class["weighted avg"]["f1-score"])
    if curves.auc:
        report.metrics.update(roc_auc=curves.auc[MACRO], roc_auc_micro=curves.auc[MICRO],
                              average_precision=curves.ap[MACRO], average_precision_micro=curves.ap[MICRO])
        report.table("roc", ["class", "false_positive_rate", "true_positive_rate"], curves.rows("roc"))
        report.table("precision_recall", ["class", "recall", "precision"], curves.rows("pr"))
        report.add("roc_pr", "ROC and precision-recall", "Each class against the rest (the predicted probability of "
                   "the class), with the micro average (every image and class as one decision) and the macro average "
                   f"(the mean over classes): macro AUC {curves.auc[MACRO]:.3f}, micro AUC {curves.auc[MICRO]:.3f}, "
                   f"macro average precision {curves.ap[MACRO]:.3f}; per class in the per-class table.",
                   roc_pr_figure(curves))


def _interpretability_panels(report: Report, model: nn.Module, layers: Layers, batches: Batches,
                             normalization: Normalization) -> None:
    r, classes = report.results, report.classes
    layer = module_name(model, layers.target)
    correct = (r.preds == r.labels).nonzero()[:, 0]
    pool = correct if len(correct) else torch.arange(len(r.labels))
    index = int(pool[r.confidence[pool].argmax()])  # the most confident correct prediction
    image, _ = batches(r.image(index)[None], r.labels[index:index + 1])
    result = guided_backprop(model, layers.target, image)
    exact = set(result.activations) <= {"ReLU"}
    report.add("guided_backprop", "Guided backpropagation",
               f"Input gradients of the {len(result.neurons)} channels of {layer} with the strongest peak "
               f"activation on this test image, each from its peak position; positive gradients only at every "
               f"activation module ({', '.join(result.activations) or 'none'}). "
               + ("Exact guided backpropagation (ReLU)." if exact else "With non-ReLU activations this is the "
                  "clamped-gradient analogue of guided backpropagation, see sweepcnn.report.interpret.guided."),
               guided_figure(to_uint8(image, normalization)[0], result, layer,
                             f"{classes[int(r.labels[index])]} ({float(r.confidence[index]):.2f})"))
    picks = [rows[0] for rows in grid_indices(r.images.labels, len(classes), per_class=1) if rows]
    images, _ = batches(torch.stack([r.image(i) for i in picks]), r.labels[picks])
    cams, targets = grad_cam(model, layers.target, images)
    titles = [f"true: {classes[int(r.labels[i])]}\npred: {classes[int(t)]}" for i, t in zip(picks, targets)]
    report.add("gradcam", "Grad-CAM", f"Where {layer} supports the predicted class: one test image per class "
               "(up to 10), the map upsampled to the input size and overlaid.",
               gradcam_figure(to_uint8(images, normalization), cams, titles, layer))
