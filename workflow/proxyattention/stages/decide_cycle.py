"""The stop rule between cycles: whether cycle n runs, decided from the metrics of cycles 0..n-1.

A stopped cycle still produces its files (empty selections, the previous
checkpoint, zero training time) so the DAG completes without spending compute,
and the summary says where each run stopped.
"""

from __future__ import annotations

import shutil

import pandas as pd

from ..files.atomic import atomic_path, read_json, write_csv, write_json
from ..runtime.timing import timed_stage


def decide(cycle: int, metrics_paths: list, stop_when: dict) -> dict:
    """``{"run": bool, "reason": str}`` for ``cycle`` given the earlier cycles' metrics, in order."""
    history = [read_json(p) for p in metrics_paths]
    if any(not m.get("ran", True) for m in history[1:]):
        return {"cycle": cycle, "run": False, "reason": "an earlier cycle was already stopped"}
    accuracies = [m["accuracy"] for m in history]
    target = stop_when.get("target_accuracy")
    if target is not None and accuracies and accuracies[-1] >= target:
        return {"cycle": cycle, "run": False, "reason": f"validation accuracy {accuracies[-1]:.4f} reached target {target}"}
    patience = stop_when.get("patience")
    if patience is not None and len(accuracies) > patience:
        best_before = max(accuracies[: -patience])
        if max(accuracies[-patience:]) <= best_before:
            return {"cycle": cycle, "run": False, "reason": f"no gain in validation accuracy for {patience} cycle(s)"}
    return {"cycle": cycle, "run": True, "reason": ""}


@timed_stage
def write_decision(cycle: int, metrics_paths: list, stop_when: dict, out) -> None:
    write_json(out, decide(cycle, metrics_paths, stop_when))


def should_run(decision_path) -> bool:
    return bool(read_json(decision_path)["run"])


@timed_stage
def skip_training(init_weights, init_meta, out_weights, out_meta, out_epochs, out_stats, reason: str,
                  init_optimizer=None, out_optimizer=None, out_record=None) -> None:
    """Outputs of a stopped cycle's training: the previous checkpoint (and optimizer state), no
    epochs, zero cost; a record (``out_record``) that says nothing was recorded."""
    pairs = [(init_weights, out_weights), (init_meta, out_meta)]
    if out_optimizer:
        pairs.append((init_optimizer, out_optimizer))
    for src, dst in pairs:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    from ..analysis.curves import EPOCH_COLUMNS

    write_csv(out_epochs, pd.DataFrame(columns=EPOCH_COLUMNS))
    if out_record:
        from ..training.record import write_record

        write_record(out_record, None, None, None, seed=0, epoch=0, augment={})
    write_json(out_stats, {"skipped": True, "reason": reason, "epochs": 0, "images_seen": 0, "train_seconds": 0.0,
                           "wall_seconds": 0.0, "n_train_original": 0, "n_train_extra": 0})
