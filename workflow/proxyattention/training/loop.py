"""One epoch of training (mixed precision, non-finite losses caught on the device) and the
optimizer a model's settings name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .schedules import RunSchedule


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite: training diverged."""


def make_optimizer(model, settings: dict):
    """The model's optimizer and its RunSchedule over the job's slice of the run (schedule_span)."""
    m = settings["model"]
    if m["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=m["lr"], momentum=m["momentum"], weight_decay=m["weight_decay"])
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=m["lr"], weight_decay=m["weight_decay"])
    span = settings["schedule_span"]
    return opt, RunSchedule(opt, m["schedule"], m["lr"], span["start_epoch"], span["total_epochs"])


CHECK_EVERY = 100  # steps between the host's looks at the device-side finiteness record


def train_one_epoch(model, batches, optimizer, scheduler, scaler, runtime, epoch: int = 0,
                    model_name: str = "<model>", batch_size: int | None = None, recorder=None):
    """One pass over ``batches``; returns (summed loss, correct predictions, images seen).

    With a ``recorder`` (training/record.py) the batches carry their images' indices and the
    recorder keeps each image's prediction, loss and map from this pass, on the device.

    Stops with NonFiniteLossError on a NaN or infinite loss, naming its step: the device
    records the first such step and the host reads that record every CHECK_EVERY steps and
    at the end, so no step waits for the device (an fp16 GradScaler still syncs once per step
    in torch itself). No checkpoint is written after a non-finite loss. Turns a CUDA
    out-of-memory error into one that names the batch size setting.
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    correct = torch.zeros((), dtype=torch.int64, device=runtime.device)
    counter = torch.zeros((), dtype=torch.float64, device=runtime.device)  # the step, counted on the device
    first_bad = torch.full((2,), -1.0, dtype=torch.float64, device=runtime.device)  # step, loss
    seen = 0

    def check(lr: float) -> None:
        step, value = first_bad.tolist()
        if step >= 0:
            raise NonFiniteLossError(
                f"loss is {value} at epoch {epoch + 1}, batch {int(step) + 1} (lr {lr:.3g}); training "
                f"diverged and no checkpoint was written. Lower models.{model_name}.lr or use precision: fp32."
            )

    for step, batch in enumerate(batches):
        x, y = batch[0], batch[1]
        try:
            if recorder is not None:
                recorder.batch(batch[2])
            with runtime.autocast():
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            if recorder is not None:
                recorder.forward(logits, y)
            bad = ~torch.isfinite(loss) & (first_bad[0] < 0)
            first_bad.copy_(torch.where(bad, torch.stack([counter, loss.detach().double()]), first_bad))
            counter += 1
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            if recorder is not None:
                recorder.stepped(optimizer, scaler)
            scaler.update()
        except torch.cuda.OutOfMemoryError:
            raise RuntimeError(
                f"CUDA out of memory with batch size {batch_size} at image size {tuple(x.shape[-2:])}; "
                f"lower models.{model_name}.batch_size in the config"
            ) from None
        scheduler.step()
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if (step + 1) % CHECK_EVERY == 0:
            check(optimizer.param_groups[0]["lr"])
    check(optimizer.param_groups[0]["lr"])
    return loss_sum.item(), correct.item(), seen
