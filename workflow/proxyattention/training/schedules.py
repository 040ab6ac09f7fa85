"""Learning-rate schedules defined over a position in epochs, so that one schedule can span a
whole run that several jobs train in turn (the finetune, then each cycle).

A job trains the slice [start_epoch, start_epoch + epochs) of a schedule of ``total_epochs``;
within an epoch the position advances by 1 / (steps in that epoch), so every arm's cycle n
spans the same learning rates however many images it adds. ``training.cycle_mode: restart``
gives each job a schedule of its own (start 0, total = its epochs): the behaviour before
continued cycles, a fresh one-cycle warm-up at every cycle.

The shapes are torch's: ``onecycle`` as OneCycleLR's defaults (30% rising by cosine from
lr/25 to lr, then falling to lr/25e4, the first momentum, Adam's beta1 or SGD's momentum,
moving the opposite way between 0.95 and 0.85), ``cosine`` as CosineAnnealingLR down to 0,
``constant``. They are written as functions of the fraction of the run done, so they differ
from torch's step-counted ones by under a step's worth (tests/test_schedules.py).
"""

from __future__ import annotations

import math

PCT_START, DIV_FACTOR, FINAL_DIV_FACTOR = 0.3, 25.0, 1e4  # torch OneCycleLR's defaults
BASE_MOMENTUM, MAX_MOMENTUM = 0.85, 0.95


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def shape(kind: str, u: float) -> tuple[float, float | None]:
    """(lr factor, first momentum or None) at the fraction ``u`` in [0, 1] of a schedule."""
    u = min(max(u, 0.0), 1.0)
    if kind == "onecycle":
        low, end = 1.0 / DIV_FACTOR, 1.0 / DIV_FACTOR / FINAL_DIV_FACTOR
        if u <= PCT_START:
            pct = u / PCT_START
            return _cos(low, 1.0, pct), _cos(MAX_MOMENTUM, BASE_MOMENTUM, pct)
        pct = (u - PCT_START) / (1 - PCT_START)
        return _cos(1.0, end, pct), _cos(BASE_MOMENTUM, MAX_MOMENTUM, pct)
    if kind == "cosine":
        return (1 + math.cos(math.pi * u)) / 2, None
    if kind == "constant":
        return 1.0, None
    raise ValueError(f"unknown schedule '{kind}'; allowed: onecycle, cosine, constant")


class RunSchedule:
    """Sets the optimizer's learning rate (and first momentum, for onecycle) from the position
    in epochs; ``step()`` after each batch, ``start_epoch(steps)`` before each epoch."""

    def __init__(self, optimizer, kind: str, base_lr: float, start_epoch: float, total_epochs: float):
        self.optimizer, self.kind, self.base_lr = optimizer, kind, float(base_lr)
        self.total = float(total_epochs)
        self._epoch, self._steps, self._done = float(start_epoch), 1, 0
        self._apply()

    @property
    def position(self) -> float:
        """Epochs of the run done, the current epoch's steps as a fraction (no rounding drift)."""
        return self._epoch + self._done / self._steps

    def begin_epoch(self, epoch: int, steps: int) -> None:
        """Place the position at the start of ``epoch`` (of the run) with ``steps`` batches in it."""
        self._epoch, self._steps, self._done = float(epoch), max(int(steps), 1), 0
        self._apply()

    def step(self) -> None:
        self._done += 1
        self._apply()

    def _apply(self) -> None:
        factor, momentum = shape(self.kind, self.position / self.total if self.total > 0 else 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * factor
            if momentum is not None:
                if "betas" in group:
                    group["betas"] = (momentum, *tuple(group["betas"])[1:])
                elif "momentum" in group and group["momentum"] > 0:
                    group["momentum"] = momentum

    def state_dict(self) -> dict:
        return {"position": self.position, "epoch": self._epoch, "steps": self._steps, "done": self._done,
                "total": self.total, "kind": self.kind}

    def load_state_dict(self, state: dict) -> None:
        self._epoch, self._steps, self._done = float(state["epoch"]), int(state["steps"]), int(state["done"])
        self._apply()
