"""Names of the report's figures, shared by the rules and the figures stage (no heavy imports)."""

FIGURE_NAMES = ["paired_differences", "accuracy_by_cycle", "accuracy_by_time", "accuracy_cost", "time_to_target",
                "peak_memory", "confusion_matrices", "attention_measures", "faithfulness"]
# Drawn when a dataset has training sizes (datasets.<name>.train_sizes): the effect against size.
SIZE_FIGURE_NAMES = ["effect_by_size", "learning_curves"]


def figure_names(config: dict) -> list[str]:
    """The figures a run draws: every run's, and the training sizes' when it has any."""
    sized = any((spec.get("train_sizes") or {}) for spec in config["datasets"].values())
    return FIGURE_NAMES + (SIZE_FIGURE_NAMES if sized else [])
