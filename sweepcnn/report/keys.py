"""The W&B keys of a run report, each under report/: shared by the report's logging (sweepcnn.report.wandb_log) and
the W&B report pages (sweepcnn.sweep.wandb_report), which must not start torch to read them."""

# The figures (also the PNG file stems) and the tables (see sweepcnn.report.wandb_log.log_report).
PANEL_KEYS = ("predictions", "mistakes", "confusion_matrix", "roc_pr", "filters", "curves", "guided_backprop",
              "gradcam")
WANDB_TABLE_KEYS = ("per_class_table", "test_predictions", "predictions_table", "mistakes_table")
# The W&B charts (custom charts of wandb.plot: the key holds the chart, <key>_table its data).
CHART_KEYS = ("confusion_matrix_chart", "roc_chart", "precision_recall_chart")
