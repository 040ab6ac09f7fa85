"""Stage ``finetune`` / ``retrain``: train a timm model on prepared arrays, save it, exit.

The epoch loop is training/loop.py; the rows a split reads, data/splits.py.

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

from ..data.batches import make_loader
from ..data.batches import ArraySource
from ..analysis.curves import EPOCH_COLUMNS
from ..data.splits import curve_sample, restrict_to_size, training_source, verdict_split
from ..files.artifacts import load_prepared
from ..files.atomic import atomic_path, read_json, write_csv, write_json
from ..models.build import (
    create_model,
    data_config,
    load_checkpoint,
    save_checkpoint,
    weights_source,
)
from ..models.inference import cross_entropy, predict_logits
from ..runtime.device import (
    peak_memory,
    reset_peak_memory,
    seed_everything,
    select_runtime,
    versions,
)
from ..runtime.timing import images_done, startup_done, timed_stage
from ..training import optimizer_state
from ..training.loop import make_optimizer, train_one_epoch
from ..training.record import write_record

log = logging.getLogger(__name__)


def _fingerprint(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def content_digest(path) -> str:
    """sha1 of a file's bytes: resume state belongs to what the inputs hold, not to their names
    or sizes (a rerun mask stage may write a different erased.npz of the same size)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def file_identity(path) -> list:
    """What stands for a large input's bytes in the resume fingerprint, without reading them: its
    size, modification time (ns) and inode. Every stage writes its outputs to a temporary and
    renames it (files/atomic.py), so a rewritten file, even of the same size, is a new inode with a
    new time; a job resumed on the same files matches. (Hashing every earlier cycle's erased.npz
    at every retrain read ~100 GB at cycle 3 of an ImageNet grid.)"""
    stat = Path(path).stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


@timed_stage
def train(settings: dict, images_path, index_path, classes_path, out_weights, out_meta, out_epochs, out_stats,
          *, seed: int, init_weights=None, init_meta=None, extra=(), num_workers: int = 0,
          device: str | None = None, init_optimizer=None, out_optimizer=None, out_record=None,
          epoch_sample=None, curve_every=None) -> None:
    """Train for ``settings['epochs']`` epochs and write the checkpoint, epoch log and stats.

    Starts from ``init_weights``/``init_meta`` (a previous checkpoint) when given,
    else from the configured pretrained weights with a new head; with ``init_optimizer``
    (the previous job's ``optimizer.safetensors``) the optimizer and grad scaler continue
    from its state, and the schedule from ``settings['schedule_span']``. ``out_optimizer``
    receives the state at the end. ``extra`` lists ``erased.npz`` files whose images join
    the original training images. With ``settings['record']`` the last epoch records what it saw
    of each original training image (training/record.py) into ``out_record``; without it
    ``out_record`` (when given) says that nothing was recorded. ``num_workers`` gather threads prepare batches; results
    do not depend on it. With ``settings['train_size']`` only that size's training rows are trained on.

    Each epoch but the last gets a curve point (``curve_accuracy``, ``curve_loss`` in epochs.csv) on
    ``epoch_sample`` images of the verdicts' split (data/splits.py curve_sample: the same rows for
    every epoch, arm and seed); the last epoch's point is the evaluation's, on the same checkpoint,
    read from its per-image file (epoch_curve), so no pass is paid twice. ``curve_every`` N keeps a
    point only every N-th epoch (0: none but the evaluation's). ``epoch_sample`` and ``curve_every``
    change no weight: None reads the job's ``training.epoch_sample`` (1000 outside a job) and
    ``training.curve_every`` (1) (runtime/scripting.py job_setting), not the settings, and
    epochs.csv names what it used (a row without a point has NaN).
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
    from ..runtime.scripting import job_setting

    if epoch_sample is None:
        epoch_sample = job_setting("training", "epoch_sample", default=1000)
    if curve_every is None:
        curve_every = int(job_setting("training", "curve_every", default=1))
    seed_everything(int(np.random.SeedSequence(stream).generate_state(1)[0]))

    images, index = load_prepared(images_path, index_path)
    index = restrict_to_size(index, settings.get("train_size"), str(index_path))
    info = read_json(classes_path)
    source, n_extra = training_source(images, index, extra)
    curve_rows = curve_sample(index, epoch_sample)
    curve_labels = index.set_index("index").loc[curve_rows, "label"].to_numpy(np.int64)
    curve_source = ArraySource([(images, curve_rows, curve_labels)])
    curve_split = verdict_split(index)

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
        erasing=settings.get("erasing"),  # the erasing arm's cycles (data/random_erasing.py)
    )
    record_spec = settings.get("record")
    record = None  # the last epoch's record (numpy arrays), once it exists
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
                               [file_identity(p) for p in extra], init_weights and content_digest(init_weights),
                               init_optimizer and content_digest(init_optimizer), len(source), epoch_sample,
                               *([curve_every] if curve_every != 1 else []))
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
            if state.get("record") is not None:
                record = {key: value.numpy() for key, value in state["record"].items()}
                record["layer"] = state.get("record_layer")
            log.info("resuming from epoch %d of %d (%s)", start_epoch, epochs, state_file)
        else:
            log.info("ignoring %s: it belongs to other settings or inputs", state_file)
    reset_peak_memory(runtime)
    startup_done()

    show_bar = sys.stderr.isatty()
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        scheduler.begin_epoch(run_start + epoch, len(loader))
        lr_start = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        recorder = None
        if record_spec and epoch == epochs - 1:
            from ..training.record import TrainingPassRecorder

            recorder = TrainingPassRecorder(model, len(source), runtime.device, record_spec["maps"],
                                            _record_layer(record_spec, model, info["image_size"]),
                                            record_spec["target"])
        loader.with_rows = recorder is not None
        batches = loader
        if show_bar:
            from tqdm import tqdm

            batches = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False)
        try:
            loss_sum, correct, seen = train_one_epoch(model, batches, optimizer, scheduler, scaler, runtime,
                                                      epoch, names.get("model", "<model>"), mset["batch_size"],
                                                      recorder)
        finally:
            if recorder is not None:
                recorder.close()
        if recorder is not None:
            record = recorder.result(source.n_original)
            record["layer"] = recorder.layer
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        images_seen += seen
        last = epoch == epochs - 1  # its point is the evaluation's (epoch_curve)
        curve = not last and len(curve_labels) > 0 and curve_every > 0 and (epoch + 1) % curve_every == 0
        logits = predict_logits(model, curve_source, mean, std, mset["batch_size"], runtime) if curve else None
        rows.append({
            "epoch": epoch + 1,
            "run_epoch": run_start + epoch + 1,  # the epoch's place in the whole run (cycle_mode: continue)
            "lr_start": lr_start,
            "lr_end": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "curve_split": curve_split,
            "curve_images": len(curve_labels),
            "curve_loss": float(cross_entropy(logits, curve_labels).mean()) if curve else math.nan,
            "curve_accuracy": float((logits.argmax(1) == curve_labels).mean()) if curve else math.nan,
            "seconds": seconds,
            "images_per_s": seen / seconds if seconds > 0 else math.nan,
        })
        r = rows[-1]
        log.info("epoch %d/%d loss %.4f train acc %.4f %s acc %.4f (%d images) %.1f s %.1f img/s", epoch + 1,
                 epochs, r["train_loss"], r["train_accuracy"], curve_split, r["curve_accuracy"], len(curve_labels),
                 seconds, r["images_per_s"])
        state_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(state_file) as tmp:
            torch.save({
                "fingerprint": fingerprint, "epoch": epoch + 1, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state(), "rows": json.dumps(rows),
                "cuda_rng": torch.cuda.get_rng_state(runtime.device) if runtime.device.type == "cuda" else None,
                "precision": runtime.precision,
                "train_seconds": train_seconds, "images_seen": images_seen,
                "record": None if record is None else {k: torch.from_numpy(np.asarray(v)) for k, v in record.items()
                                                       if k != "layer"},
                "record_layer": None if record is None else record["layer"],
            }, tmp)

    if out_record:
        write_record(out_record, record, record_spec, source, seed=stream, epoch=epochs - 1,
                     augment=tset["augment"])
    images_done()  # what is left is the model's and the tables' (its checkpoint, its optimizer state)
    save_checkpoint(model, out_weights, out_meta, meta)
    if out_optimizer:
        optimizer_state.save(out_optimizer, optimizer, scaler, scheduler)
    write_csv(out_epochs, pd.DataFrame(rows, columns=EPOCH_COLUMNS))
    write_json(out_stats, {
        "epochs": epochs,
        "resumed_from_epoch": start_epoch,
        "n_train_original": len(source) - n_extra,
        "n_train_extra": n_extra,
        "images_seen": images_seen,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - wall_start,
        "images_per_s": images_seen / train_seconds if train_seconds > 0 else None,
        "device": str(runtime.device),
        "device_warning": runtime.warning,  # e.g. GPUs this torch cannot see (it ran on the CPU)
        "precision": runtime.precision,
        "batch_size": mset["batch_size"],
        "seed": seed,
        **peak_memory(runtime),
        "versions": versions(),
    })
    shutil.rmtree(state_dir, ignore_errors=True)


def _record_layer(spec: dict, model, image_size: int) -> str | None:
    """The layer a training-pass map is taken at: the pooled layer for ``cam``, else the model's
    target layer (``auto`` resolved as compute_cams resolves it)."""
    from ..models.cams import auto_target_layer, final_feature_layer

    if spec["maps"] is None:
        return None
    if spec["maps"] == "cam":
        return final_feature_layer(model, image_size)
    return auto_target_layer(model, image_size) if spec["layer"] == "auto" else spec["layer"]
