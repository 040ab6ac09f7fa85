"""Glue for Snakemake ``script:`` files: logging to the rule's log, thread count."""

from __future__ import annotations

import logging
import sys


def setup(snakemake) -> None:
    """Send stderr and logging to the rule's log file and use the rule's threads."""
    if snakemake.log:
        stream = open(snakemake.log[0], "a", buffering=1)
        sys.stderr = stream
        sys.stdout = stream
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if snakemake.rule in TORCH_RULES:
        import torch

        torch.set_num_threads(max(1, int(snakemake.threads)))


# Only these rules run a model; the others must not pay seconds to import torch.
TORCH_RULES = {"finetune", "retrain", "find_misclassified", "compute_cams", "evaluate"}
