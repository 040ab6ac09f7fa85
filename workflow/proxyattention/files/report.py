"""Names of the report's figures, shared by the rules and the figures stage (no heavy imports)."""

FIGURE_NAMES = ["paired_differences", "accuracy_by_cycle", "accuracy_by_time", "accuracy_cost", "time_to_target",
                "peak_memory", "confusion_matrices", "attention_measures", "faithfulness"]
