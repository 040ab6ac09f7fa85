"""Names of the report's figures, shared by the rules and the figures stage (no heavy imports)."""

FIGURE_NAMES = ["accuracy_by_cycle", "accuracy_by_time", "peak_memory", "time_to_target", "confusion_matrices"]
