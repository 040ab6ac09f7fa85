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
    if "torch" in sys.modules or snakemake.rule not in LIGHT_RULES:
        import torch

        torch.set_num_threads(max(1, int(snakemake.threads)))


# Rules that never touch a model: importing torch would cost them seconds.
LIGHT_RULES = {"decide_cycle", "aggregate", "figures", "examples"}
