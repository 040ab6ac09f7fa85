"""Stage ``finetune`` / ``retrain``: train a timm model on prepared arrays, save it, exit.

One process per training so the GPU is free between stages. Per-epoch state
lives in an undeclared ``.train_state/`` folder beside the outputs, so a killed
job resumes from its last completed epoch; it is removed once the stage is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .artifacts import npz_array
from .atomic import atomic_path, read_json, write_csv, write_json
from .data import ArraySource, make_loader
from .inference import cross_entropy, predict_logits
from .models import create_model, data_config, load_checkpoint, save_checkpoint, weights_source
from .prepare import load_prepared
from . import optimizer_state
from .runtime import peak_memory, reset_peak_memory, seed_everything, select_runtime, versions
from .schedules import RunSchedule
from .timing import timed_stage

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite: training diverged."""


def training_source(images, index: pd.DataFrame, extra_paths=()) -> tuple[ArraySource, int]:
    """Original training images plus the new images of earlier cycles; and how many are new."""
    train = index[index.split == "train"]
    parts = [(images, train["index"].to_numpy(), train["label"].to_numpy())]
    n_extra = 0
    for path in extra_paths:
        with np.load(path, allow_pickle=False) as data:
            labels = data["labels"]
        if len(labels):  # the images memory-mapped: a batch is read when it is gathered
            parts.append((npz_array(path, "images"), np.arange(len(labels)), labels))
            n_extra += len(labels)
    return ArraySource(parts), n_extra


def split_source(images, index: pd.DataFrame, split: str) -> ArraySource:
    rows = index[index.split == split]
    return ArraySource([(images, rows["index"].to_numpy(), rows["label"].to_numpy())])


def validation_source(images, index: pd.DataFrame) -> ArraySource:
    return split_source(images, index, "val")


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
                    model_name: str = "<model>", batch_size: int | None = None):
    """One pass over ``batches``; returns (summed loss, correct predictions, images seen).

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

    for step, (x, y) in enumerate(batches):
        try:
            with runtime.autocast():
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            bad = ~torch.isfinite(loss) & (first_bad[0] < 0)
            first_bad.copy_(torch.where(bad, torch.stack([counter, loss.detach().double()]), first_bad))
            counter += 1
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
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


def _fingerprint(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def content_digest(path) -> str:
    """sha1 of a file's bytes: resume state belongs to what the inputs hold, not to their names
    or sizes (a rerun mask stage may write a different erased.npz of the same size)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


@timed_stage
def train(settings: dict, images_path, index_path, classes_path, out_weights, out_meta, out_epochs, out_stats,
          *, seed: int, init_weights=None, init_meta=None, extra=(), num_workers: int = 0,
          device: str | None = None, init_optimizer=None, out_optimizer=None) -> None:
    """Train for ``settings['epochs']`` epochs and write the checkpoint, epoch log and stats.

    Starts from ``init_weights``/``init_meta`` (a previous checkpoint) when given,
    else from the configured pretrained weights with a new head; with ``init_optimizer``
    (the previous job's ``optimizer.safetensors``) the optimizer and grad scaler continue
    from its state, and the schedule from ``settings['schedule_span']``. ``out_optimizer``
    receives the state at the end. ``extra`` lists ``erased.npz`` files whose images join
    the original training images. ``num_workers`` gather threads prepare batches; results
    do not depend on it.
    """
    wall_start = time.perf_counter()
    out_weights = Path(out_weights)
    state_dir = out_weights.parent / ".train_state"
    tset, mset = settings["training"], settings["model"]
    epochs = settings["epochs"]
    names = settings.get("names", {})
    runtime = select_runtime(tset["precision"], tset["channels_last"], device, tset["deterministic"])
    # One random stream per (seed, cycle): fresh each cycle, shared by every arm of a cycle.
    stream = (int(seed), int(settings.get("cycle", 0)))
    seed_everything(int(np.random.SeedSequence(stream).generate_state(1)[0]))

    images, index = load_prepared(images_path, index_path)
    info = read_json(classes_path)
    source, n_extra = training_source(images, index, extra)
    val_source = validation_source(images, index)

    if init_weights:
        model, meta = load_checkpoint(init_weights, init_meta)
    else:
        model = create_model(mset["timm_name"], mset["weights"], len(info["classes"]), info["image_size"])
        meta = {"timm_name": mset["timm_name"], "classes": info["classes"], "image_size": info["image_size"],
                "pretrained": weights_source(mset["timm_name"], mset["weights"]),
                **data_config(model, mset["timm_name"], mset["weights"])}
    model = runtime.prepare_model(model)
    mean, std = meta["mean"], meta["std"]

    loader, sampler = make_loader(
        source, mean, std, mset["batch_size"], seed=stream, train=True, hflip=tset["augment"]["hflip"],
        crop_padding=tset["augment"]["crop_padding"], num_workers=num_workers,
        pin_memory=runtime.device.type == "cuda", device=runtime.device, channels_last=runtime.channels_last,
    )
    optimizer, scheduler = make_optimizer(model, settings)
    scaler = runtime.grad_scaler()
    run_start = int(settings["schedule_span"]["start_epoch"])
    if init_optimizer:
        saved = optimizer_state.load(init_optimizer, optimizer, scaler)
        if abs(saved["position"] - run_start) > 1e-6:
            log.warning("%s ended at epoch %.3f of the run; this job starts its slice at epoch %d", init_optimizer,
                        saved["position"], run_start)

    # index.csv holds each prepared image's sha1, so its digest stands for images.npy's pixels.
    fingerprint = _fingerprint(settings, seed, runtime.precision, str(runtime.device.type), content_digest(index_path),
                               [content_digest(p) for p in extra], init_weights and content_digest(init_weights),
                               init_optimizer and content_digest(init_optimizer), len(source))
    rows, start_epoch, train_seconds, images_seen = [], 0, 0.0, 0
    state_file = state_dir / "state.pt"
    state = None
    if state_file.exists():
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception as err:  # e.g. emptied by a node crash: the stage starts over rather than fail every rerun
            log.warning("cannot read %s (%s: %s); starting this stage over", state_file, type(err).__name__, err)
    if state is not None:
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
            if runtime.device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], runtime.device)
            rows = json.loads(state["rows"])
            start_epoch, train_seconds, images_seen = state["epoch"], state["train_seconds"], state["images_seen"]
            log.info("resuming from epoch %d of %d (%s)", start_epoch, epochs, state_file)
        else:
            log.info("ignoring %s: it belongs to other settings or inputs", state_file)
    reset_peak_memory(runtime)

    show_bar = sys.stderr.isatty()
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        scheduler.begin_epoch(run_start + epoch, len(loader))
        lr_start = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        batches = loader
        if show_bar:
            from tqdm import tqdm

            batches = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False)
        loss_sum, correct, seen = train_one_epoch(model, batches, optimizer, scheduler, scaler, runtime,
                                                  epoch, names.get("model", "<model>"), mset["batch_size"])
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        images_seen += seen
        val_logits = predict_logits(model, val_source, mean, std, mset["batch_size"], runtime)
        val_labels = val_source.labels
        rows.append({
            "epoch": epoch + 1,
            "run_epoch": run_start + epoch + 1,  # the epoch's place in the whole run (cycle_mode: continue)
            "lr_start": lr_start,
            "lr_end": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "val_loss": float(cross_entropy(val_logits, val_labels).mean()) if len(val_labels) else math.nan,
            "val_accuracy": float((val_logits.argmax(1) == val_labels).mean()) if len(val_labels) else math.nan,
            "seconds": seconds,
            "images_per_s": seen / seconds if seconds > 0 else math.nan,
        })
        r = rows[-1]
        log.info("epoch %d/%d loss %.4f train acc %.4f val acc %.4f %.1f s %.1f img/s", epoch + 1, epochs,
                 r["train_loss"], r["train_accuracy"], r["val_accuracy"], seconds, r["images_per_s"])
        state_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(state_file) as tmp:
            torch.save({
                "fingerprint": fingerprint, "epoch": epoch + 1, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state(), "rows": json.dumps(rows),
                "cuda_rng": torch.cuda.get_rng_state(runtime.device) if runtime.device.type == "cuda" else None,
                "precision": runtime.precision,
                "train_seconds": train_seconds, "images_seen": images_seen,
            }, tmp)

    save_checkpoint(model, out_weights, out_meta, meta)
    if out_optimizer:
        optimizer_state.save(out_optimizer, optimizer, scaler, scheduler)
    write_csv(out_epochs, pd.DataFrame(rows))
    write_json(out_stats, {
        "epochs": epochs,
        "resumed_from_epoch": start_epoch,
        "n_train_original": len(source) - n_extra,
        "n_train_extra": n_extra,
        "images_seen": images_seen,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - wall_start,
        "images_per_s": images_seen / train_seconds if train_seconds > 0 else None,
        "final_val_accuracy": rows[-1]["val_accuracy"] if rows else None,
        "device": str(runtime.device),
        "device_warning": runtime.warning,  # e.g. GPUs this torch cannot see (it ran on the CPU)
        "precision": runtime.precision,
        "batch_size": mset["batch_size"],
        "seed": seed,
        **peak_memory(runtime),
        "versions": versions(),
    })
    shutil.rmtree(state_dir, ignore_errors=True)
