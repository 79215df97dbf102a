"""The W&B keys of a run report, each under report/: shared by the report's logging (sweepcnn.report.wandb_log) and
the W&B report pages (sweepcnn.sweep.wandb_report), which must not start torch to read them."""

# The figures (also the PNG file stems) and the tables (see sweepcnn.report.wandb_log.log_report).
PANEL_KEYS = ("predictions", "mistakes", "confusion_matrix", "roc_pr", "filters", "curves", "guided_backprop",
              "gradcam")
PER_CLASS_TABLE = "per_class_table"
TEST_PREDICTIONS = "test_predictions"  # every test image (--report_table_rows caps it)
PREDICTIONS_TABLE = "predictions_table"
MISTAKES_TABLE = "mistakes_table"
WANDB_TABLE_KEYS = (PER_CLASS_TABLE, TEST_PREDICTIONS, PREDICTIONS_TABLE, MISTAKES_TABLE)
# The W&B charts (wandb.plot custom charts: <key>_table holds the data), each with its Vega spec and fields as
# wandb.plot logs them (a report page's custom chart names the same).
CONFUSION_MATRIX_CHART = "confusion_matrix_chart"
ROC_CHART = "roc_chart"
PRECISION_RECALL_CHART = "precision_recall_chart"
CHARTS = {
    CONFUSION_MATRIX_CHART: ("wandb/confusion_matrix/v1",
                             {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"}),
    ROC_CHART: ("wandb/line/v0", {"x": "false_positive_rate", "y": "true_positive_rate", "stroke": "class"}),
    PRECISION_RECALL_CHART: ("wandb/line/v0", {"x": "recall", "y": "precision", "stroke": "class"}),
}
