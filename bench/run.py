"""Benchmarks of every stage against its anchor, side by side in one process.

    python bench/run.py            # full sizes, 5 repeats, median
    python bench/run.py --quick    # tiny sizes, one repeat (what the test suite runs)

Writes results/bench/bench.md and bench.json (or --out). Each entry measures the
workflow's path and its anchor in the same run, on the same inputs, and reports
the median over repeats and their ratio. The whole-workflow entry runs the demo
config (--workflow-config) twice in a temporary folder, cold and with warm start,
about 13 minutes on a 2-core CPU. No thresholds: this reports, tests assert.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "workflow" / "data" / "fashion_mnist_demo"


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    return median_times([fn], repeats, warmup)[0]


def median_times(fns, repeats: int, warmup: int = 1) -> list[float]:
    """Median seconds of each of ``fns``, timed in turn within each repeat (A B A B ...), so a slow
    spell of a shared machine falls on all of them rather than on one."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            out.append(_timed(fn))
    return [statistics.median(t) for t in times]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# 1. compute-CAMs ---------------------------------------------------------------------------


def bench_cams(models, sizes, batch: int, repeats: int) -> list[dict]:
    import timm
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from proxyattention.cams import GapLinearCAM, auto_target_layer, build_cam, compute_maps, fast_path_applies

    rows = []
    dev = device()
    for name in models:
        for size in sizes:
            torch.manual_seed(0)
            kwargs = {"img_size": size} if name.startswith("vit") else {}
            model = timm.create_model(name, num_classes=10, **kwargs).eval().to(dev)
            x = torch.randn(batch, 3, size, size, device=dev)
            classes = list(range(batch))
            classes = [c % 10 for c in classes]
            layer = auto_target_layer(model, size)
            targets = [ClassifierOutputTarget(c) for c in classes]

            def forward():
                with torch.inference_mode():
                    model(x)

            library = pgc.GradCAM(model=model, target_layers=[dict(model.named_modules())[layer]],
                                  **({"reshape_transform": build_cam(model, "gradcam", layer, size).reshape_transform}
                                     if name.startswith("vit") else {}))
            reference = library(input_tensor=x, targets=targets)
            fast = GapLinearCAM(model) if fast_path_applies(model, "gradcam", layer, size) else None
            runs = [lambda: library(input_tensor=x, targets=targets), forward]
            if fast is not None:
                runs.append(lambda: compute_maps(fast, model, x, classes))
            t_library, t_forward, *t_fast = median_times(runs, repeats)
            row = {"model": name, "size": size, "batch": batch, "method": "gradcam",
                   "library_img_s": batch / t_library, "forward_only_img_s": batch / t_forward}
            if fast is not None:
                maps = compute_maps(fast, model, x, classes)
                row.update({"fast_img_s": batch / t_fast[0], "fast_vs_library": t_library / t_fast[0],
                            "fast_vs_forward_only": t_forward / t_fast[0],
                            "max_abs_diff": float(np.abs(maps - reference).max())})
            library.__exit__(None, None, None)
            rows.append(row)
    return rows


# 2. training ---------------------------------------------------------------------------------


def bench_training(model_name: str, size: int, batch: int, n_images: int, repeats: int) -> dict:
    """The stage's loop (DataLoader over uint8 arrays, augmentation, AMP on GPU) against a bare
    timm loop over float tensors already on the device: same model, batch, size, optimiser."""
    import timm
    import torch.nn.functional as F

    from proxyattention.data import ArraySource, make_loader
    from proxyattention.runtime import select_runtime

    runtime = select_runtime("auto", True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n_images)
    source = ArraySource([(images, np.arange(n_images), labels)])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def fresh():
        torch.manual_seed(0)
        model = runtime.prepare_model(timm.create_model(model_name, num_classes=10)).train()
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    from proxyattention.train import train_one_epoch

    model, opt = fresh()
    scaler = runtime.grad_scaler()
    constant = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    loader, sampler = make_loader(source, mean, std, batch, seed=0, train=True, hflip=True, crop_padding=4,
                                  pin_memory=runtime.device.type == "cuda", device=runtime.device,
                                  channels_last=runtime.channels_last)

    def stage_epoch():
        train_one_epoch(model, loader, opt, constant, scaler, runtime)

    bare_model, bare_opt = fresh()
    xs = [runtime.to_device(torch.randn(batch, 3, size, size)) for _ in range(n_images // batch)]
    ys = [torch.randint(0, 10, (batch,), device=runtime.device) for _ in xs]

    def bare_epoch():
        for x, y in zip(xs, ys):
            with runtime.autocast():
                loss = F.cross_entropy(bare_model(x).float(), y)
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()

    seen_stage = n_images - (n_images % batch if n_images % batch == 1 else 0)
    seen_bare = batch * len(xs)
    t_stage, t_bare = median_times([stage_epoch, bare_epoch], repeats)
    stage_ips, bare_ips = seen_stage / t_stage, seen_bare / t_bare
    return {"model": model_name, "size": size, "batch": batch, "device": str(runtime.device),
            "precision": runtime.precision, "stage_img_s": stage_ips, "bare_loop_img_s": bare_ips,
            "ratio": stage_ips / bare_ips}


# 3. data -------------------------------------------------------------------------------------


def bench_data(n_images: int, size: int, repeats: int, source_size: int = 512) -> dict:
    """One epoch of training batches from the prepared array vs decoding and resizing the
    source JPEGs each epoch; both then augment and normalise with the same functions."""
    import cv2
    from skimage import data

    from proxyattention.data import ArraySource, augment, draw_plan, make_loader, normalise
    from proxyattention.images import decode_image, resize

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(n_images):
            photo = cv2.resize(photos[i % len(photos)], (source_size, source_size))
            path = Path(tmp) / f"{i}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
            files.append(path)
        prepared = np.stack([resize(decode_image(f), size) for f in files])
        np.save(Path(tmp) / "images.npy", prepared)
        mapped = np.load(Path(tmp) / "images.npy", mmap_mode="r")
        source = ArraySource([(mapped, np.arange(n_images), np.zeros(n_images))])
        mean = std = (0.5, 0.5, 0.5)
        loader, _ = make_loader(source, mean, std, 64, train=True, hflip=True, crop_padding=4)

        def from_array():
            for _ in loader:
                pass

        def from_files():
            for start in range(0, n_images, 64):
                batch = np.stack([resize(decode_image(f), size) for f in files[start : start + 64]])
                normalise(augment(batch, draw_plan(rng, len(batch), True, 4), 4), mean, std)

        t_array, t_files = median_times([from_array, from_files], repeats)
    return {"images": n_images, "source": f"{source_size}px JPEG", "size": size, "prepared_img_s": n_images / t_array,
            "decode_each_epoch_img_s": n_images / t_files, "ratio": t_files / t_array}


def bench_data_path(n_images: int, size: int, batch: int, repeats: int, step_model: str = "resnet18") -> dict:
    """Per DataLoader worker: today's path (gather, then crop, flip and normalise in numpy: the
    reference) vs the worker's share now (gather uint8 and draw the crop/flip plan); the device
    side (crop, flip, convert, normalise a uint8 batch) in images/s and as a fraction of one
    training step of ``step_model`` at the same batch and size. Batches are checked equal."""
    import timm
    import torch.nn.functional as F

    from proxyattention.data import ArraySource, DeviceTransform, augment, draw_plan, normalise
    from proxyattention.runtime import select_runtime

    runtime = select_runtime("auto", True)
    rng = np.random.default_rng(0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "images.npy", rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8))
        mapped = np.load(Path(tmp) / "images.npy", mmap_mode="r")
        source = ArraySource([(mapped, np.arange(n_images), np.zeros(n_images))])
        np.asarray(mapped).sum()  # warm: the page cache holds the array, as after the first epoch
        order = rng.permutation(n_images)
        batches = [order[i : i + batch] for i in range(0, n_images - batch + 1, batch)]

        def numpy_path():
            for b, idx in enumerate(batches):
                images, _ = source.gather(idx)
                normalise(augment(images, draw_plan(np.random.default_rng((0, b)), len(idx), True, 4), 4), mean, std)

        def worker_path():
            for b, idx in enumerate(batches):
                images, _ = source.gather(idx)
                torch.from_numpy(images), torch.from_numpy(draw_plan(np.random.default_rng((0, b)), len(idx), True, 4))

        transform = DeviceTransform(mean, std, 4)
        images, _ = source.gather(batches[0])
        plan = torch.from_numpy(draw_plan(np.random.default_rng((0, 0)), batch, True, 4))
        want = normalise(augment(images, plan.numpy(), 4), mean, std)
        on_device = torch.from_numpy(images).to(runtime.device), plan.to(runtime.device)
        equal = torch.equal(transform(*on_device, runtime.channels_last).cpu(), want)

        def device_side():
            transform(*on_device, runtime.channels_last)

        model = runtime.prepare_model(timm.create_model(step_model, num_classes=10)).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = transform(*on_device, runtime.channels_last)
        y = torch.zeros(batch, dtype=torch.int64, device=runtime.device)

        def train_step():
            with runtime.autocast():
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_numpy, t_worker = median_times([numpy_path, worker_path], repeats)
        t_device, t_step = median_times([device_side, train_step], repeats)
    n = batch * len(batches)
    return {"size": size, "batch": batch, "device": str(runtime.device), "numpy_path_img_s_per_worker": n / t_numpy,
            "worker_path_img_s_per_worker": n / t_worker, "worker_ratio": t_numpy / t_worker,
            "device_side_img_s": batch / t_device, "step_model": step_model, "precision": runtime.precision,
            "device_side_of_step": t_device / t_step, "identical_batch": equal}


def bench_loader(n_images: int, size: int, batch: int, repeats: int, threads=(1, 2)) -> dict:
    """What the training loop receives, end to end: uint8 batches (images, labels, plan) of one
    shuffled, augmented epoch from make_loader's gather threads, against the plain gather of
    the same rows in one process (the ceiling) and against the transport it replaced (torch
    DataLoader worker processes over the same batches: a fresh shared-memory block per batch).
    The array is warm in the page cache, as after the first epoch. Batches are checked equal."""
    from torch.utils.data import DataLoader

    from proxyattention.data import ArraySource, make_loader

    rng = np.random.default_rng(0)
    out = {"images": n_images, "size": size, "batch": batch}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "images.npy", rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8))
        mapped = np.load(Path(tmp) / "images.npy", mmap_mode="r")
        source = ArraySource([(mapped, np.arange(n_images), np.zeros(n_images))])
        np.asarray(mapped).sum()

        def loader_of(n_threads):
            device_batches, sampler = make_loader(source, (0.5,) * 3, (0.5,) * 3, batch, seed=(0, 1), train=True,
                                                  hflip=True, crop_padding=4, num_workers=n_threads)
            return device_batches.loader, sampler  # the uint8 batches, before the device transform

        gathered, sampler = loader_of(0)
        keys = list(sampler)

        def plain():
            for _, _, idx in keys:
                source.gather(idx)

        runs = {"plain_gather": plain}
        loaders = {"threads_0": gathered}
        for n in threads:
            loaders[f"threads_{n}"] = loader_of(n)[0]
            loaders[f"dataloader_workers_{n}"] = DataLoader(gathered.dataset, sampler=sampler, batch_size=None,
                                                            num_workers=n, persistent_workers=True, prefetch_factor=4)
        for name, loader in loaders.items():
            runs[name] = (lambda it: (lambda: [None for _ in it]))(loader)
        reference = [b for b in gathered]
        equal = True
        for name, loader in loaders.items():
            got = list(loader)
            equal &= len(got) == len(reference) and all(
                torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(got, reference))
        times = median_times(list(runs.values()), repeats)
    n = sum(len(k[2]) for k in keys)
    for (name, _), t in zip(runs.items(), times):
        out[f"{name}_img_s"] = n / t
    for n_threads in threads:
        out[f"threads_{n_threads}_of_plain"] = out[f"threads_{n_threads}_img_s"] / out["plain_gather_img_s"]
        out[f"workers_{n_threads}_of_plain"] = out[f"dataloader_workers_{n_threads}_img_s"] / out["plain_gather_img_s"]
    out["identical_batches"] = bool(equal)
    return out


def bench_channels_last(models, size: int, batch: int, repeats: int) -> list[dict]:
    """A training step on this device with the model and batch in NCHW vs channels-last memory
    (what training.channels_last chooses), same model, batch and optimiser."""
    import timm
    import torch.nn.functional as F

    from proxyattention.runtime import select_runtime

    runtime = select_runtime("auto", True)
    rows = []
    for name in models:
        steps = []
        for channels_last in (False, True):
            torch.manual_seed(0)
            kwargs = {"img_size": size} if name.startswith("vit") else {}
            model = timm.create_model(name, num_classes=10, **kwargs).to(runtime.device).train()
            x = torch.randn(batch, 3, size, size, device=runtime.device)
            if channels_last:
                model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            y = torch.zeros(batch, dtype=torch.int64, device=runtime.device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def step(model=model, x=x, y=y, opt=opt):
                with runtime.autocast():
                    loss = F.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            steps.append(step)
        t_nchw, t_nhwc = median_times(steps, repeats)
        rows.append({"model": name, "size": size, "batch": batch, "device": str(runtime.device),
                     "threads": torch.get_num_threads(), "nchw_img_s": batch / t_nchw,
                     "channels_last_img_s": batch / t_nhwc, "ratio": t_nchw / t_nhwc})
    return rows


def bench_prepare(n_images: int, size: int, source_size: int, threads: int, repeats: int) -> dict:
    """The prepare stage on an ImageFolder tree of JPEGs with 1 thread vs ``threads`` threads
    (OpenCV releases the GIL while it decodes and resizes); the arrays must be identical."""
    import cv2
    from skimage import data

    from proxyattention.prepare import prepare

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        for i in range(n_images):
            folder = tree / f"class{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            photo = cv2.resize(photos[i % len(photos)], (source_size, source_size))
            photo = np.roll(photo, i, axis=1)  # no two files alike
            cv2.imwrite(str(folder / f"{i}.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        spec = {"source": "imagefolder", "path": str(tree), "image_size": size, "val_fraction": 0.2,
                "split_seed": 0, "on_bad_image": "fail"}

        def run(n_threads: int):
            out = Path(tmp) / f"threads{n_threads}"
            out.mkdir(exist_ok=True)
            return lambda: prepare(spec, out / "images.npy", out / "index.csv", out / "classes.json",
                                   out / "skipped.csv", threads=n_threads)

        t_one, t_many = median_times([run(1), run(threads)], repeats)
        identical = np.array_equal(np.load(Path(tmp) / "threads1" / "images.npy"),
                                   np.load(Path(tmp) / f"threads{threads}" / "images.npy"))
    return {"images": n_images, "source": f"{source_size}px JPEG", "size": size, "threads": threads,
            "one_thread_img_s": n_images / t_one, "n_threads_img_s": n_images / t_many, "ratio": t_one / t_many,
            "identical_output": identical}


# 4. mask-and-save ----------------------------------------------------------------------------


def erase_one(image: np.ndarray, cam: np.ndarray, value: float) -> np.ndarray:
    """The per-image anchor: the quantile, an OpenCV threshold of one map, a black fill."""
    import cv2

    _, mask = cv2.threshold(cam, float(np.quantile(cam, value)), 1, cv2.THRESH_BINARY)
    out = image.copy()
    out[mask > 0] = 0
    return out


def bench_masking(n_images: int, size: int, repeats: int) -> dict:
    from proxyattention.masking import erase, threshold_masks

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8)
    maps = rng.random((n_images, size, size), dtype=np.float32)

    def vectorised():
        masks, _ = threshold_masks(maps, "quantile", 0.9)
        return erase(images, maps, masks, {"mode": "black"}, rng)

    def loop():
        return np.stack([erase_one(images[i], maps[i], 0.9) for i in range(n_images)])

    equal = bool((vectorised() == loop()).all())
    t_vec, t_loop = median_times([vectorised, loop], repeats)
    return {"images": n_images, "size": size, "vectorised_img_s": n_images / t_vec,
            "per_image_loop_img_s": n_images / t_loop, "ratio": t_loop / t_vec, "identical_output": equal}


# 5. whole workflow and import times ------------------------------------------------------------


STAGE_MODULES = ["proxyattention.prepare", "proxyattention.train", "proxyattention.misclassified",
                 "proxyattention.compute_cams", "proxyattention.masking", "proxyattention.evaluate",
                 "proxyattention.cycles", "proxyattention.aggregate", "proxyattention.figures"]


def bench_imports(repeats: int) -> list[dict]:
    rows = []
    for module in STAGE_MODULES:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
            times.append(time.perf_counter() - t0)
        rows.append({"module": module, "import_s": statistics.median(times)})
    return rows


def run_workflow(config_path: Path, workdir: Path, cores: int, warm_start: bool) -> dict:
    """Run the whole workflow on ``config_path`` in a fresh ``workdir``; wall time against the jobs'
    wall times (Snakemake's benchmark files) and the stages' own time (the `stage X took S s` log lines)."""
    import pandas as pd
    import yaml

    from proxyattention.timing import stage_seconds

    config = yaml.safe_load(config_path.read_text())
    for dataset in config["datasets"].values():  # the copy runs elsewhere: anchor data paths at the repo
        dataset["path"] = str((ROOT / dataset["path"]).resolve())
    config["results"] = "results"
    config["warm_start"] = warm_start
    workdir.mkdir(parents=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
                           "--cores", str(cores), "--directory", str(workdir), "--configfile", str(workdir / "config.yaml")],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the workflow run in {workdir} failed:\n{proc.stderr[-3000:]}")
    results = workdir / "results"
    jobs = {p.relative_to(results / "benchmarks").with_suffix(""): float(pd.read_csv(p, sep="\t")["s"].iloc[-1])
            for p in (results / "benchmarks").rglob("*.tsv")}
    stages = {p.relative_to(results / "logs").with_suffix(""): stage_seconds(p.read_text())
              for p in (results / "logs").rglob("*.log") if p.name != "warm_start.log"}
    overhead = [jobs[k] - stages[k] for k in jobs if k in stages]
    job_s, stage_s = sum(jobs.values()), sum(stages.values())
    return {"warm_start": warm_start, "jobs": len(stages), "cores": cores, "wall_s": wall,
            "sum_job_s": job_s, "sum_stage_s": stage_s,
            "median_overhead_per_job_s": statistics.median(overhead) if overhead else None,
            "wall_x_cores_over_stage_s": wall * cores / stage_s}


def quick_config(config_path: Path, out: Path) -> Path:
    """One model, one seed, the finetune only: the smallest run that still goes through Snakemake."""
    import yaml

    config = yaml.safe_load(config_path.read_text())
    first = next(iter(config["models"]))
    config.update(models={first: config["models"][first]}, seeds=[0], cycles=0,
                  training={**config.get("training", {}), "epochs_finetune": 1})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "quick_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def bench_workflow(config_path: Path, cores: int) -> list[dict]:
    """The same workflow cold (a fresh Python per job) and warm (each job a fork of a warm server)."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_workflow(config_path, Path(tmp) / name, cores, warm)
                for name, warm in (("cold", False), ("warm", True))]
    rows[1]["wall_vs_cold"] = rows[1]["wall_s"] / rows[0]["wall_s"]
    return rows


# 6. GPU precision ------------------------------------------------------------------------------


def bench_precision(models, size: int, batch: int, repeats: int) -> list[dict]:
    """On a GPU: a training step in fp32 and in the precision ``auto`` picks for it (bf16 with
    native bf16, else fp16 with the grad scaler), images/s and peak memory."""
    if not torch.cuda.is_available():
        return []
    import timm

    from proxyattention.runtime import resolve_precision, select_runtime
    from proxyattention.train import train_one_epoch

    dev = torch.device("cuda", torch.cuda.current_device())
    rows = []
    for name in models:
        for precision in ("fp32", resolve_precision("auto", dev)):
            rt = select_runtime(precision, True, str(dev))  # as a stage builds it: cudnn.benchmark, IEEE fp32
            torch.manual_seed(0)
            kwargs = {"img_size": size} if name.startswith("vit") else {}
            model = rt.prepare_model(timm.create_model(name, num_classes=10, **kwargs)).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            constant = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
            scaler = rt.grad_scaler()
            batches = [(torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last),
                        torch.randint(0, 10, (batch,), device=dev)) for _ in range(4)]

            def step():
                train_one_epoch(model, batches, opt, constant, scaler, rt)

            step()
            torch.cuda.reset_peak_memory_stats()
            t = median_time(step, repeats)
            rows.append({"model": name, "precision": precision, "tf32_convolutions": torch.backends.cudnn.allow_tf32,
                         "gpu": torch.cuda.get_device_name(dev),
                         "batch": batch, "size": size, "img_s": 4 * batch / t,
                         "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20})
            del model, opt, batches
            torch.cuda.empty_cache()
    return rows


# report ----------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    if not rows:
        return "(not run on this machine)\n"
    keys = list(rows[0])
    for r in rows[1:]:
        keys += [k for k in r if k not in keys]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, {gpu}, torch {torch.__version__}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench"))
    parser.add_argument("--workflow-config", default=str(ROOT / "config.yaml"),
                        help="config of the whole-workflow entry (default: the demo); --quick uses a one-cell cut of it")
    parser.add_argument("--cores", type=int, default=2, help="--cores of the whole-workflow runs")
    parser.add_argument("--gpu", action="store_true",
                        help="only what a GPU changes: fp32 vs AMP per model (time, peak memory) and the data path")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    torch.manual_seed(0)
    if args.gpu and not torch.cuda.is_available():
        print("bench/run.py --gpu measures what a GPU changes, and torch sees no GPU here "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run it on a GPU node, "
              "or run bench/run.py without --gpu for the CPU entries", file=sys.stderr)
        return 2
    if args.gpu:
        report = {
            "precision": bench_precision(["resnet18", "resnet50", "tf_efficientnet_lite0", "vit_tiny_patch16_224"],
                                         224, 128, repeats),
            "data_path": [bench_data_path(2048, 224, 128, repeats, "resnet18"),
                          bench_data_path(2048, 224, 128, repeats, "resnet50")],
            "loader": [bench_loader(3072, 224, 128, repeats)],
            "channels_last": bench_channels_last(["resnet18", "resnet50", "tf_efficientnet_lite0"], 224, 128, repeats),
        }
    elif args.quick:
        report = {
            "cams": bench_cams(["resnet18"], [64], 4, repeats),
            "training": [bench_training("resnet18", 32, 16, 32, repeats)],
            "data": [bench_data(16, 32, repeats, source_size=64)],
            "prepare": [bench_prepare(16, 32, 64, 2, repeats)],
            "data_path": [bench_data_path(64, 32, 16, repeats)],
            "loader": [bench_loader(64, 32, 16, repeats, threads=(1,))],
            "channels_last": bench_channels_last(["resnet18"], 32, 8, repeats),
            "masking": [bench_masking(16, 32, repeats)],
            "imports": bench_imports(1)[:2],
        }
    else:
        report = {
            "cams": bench_cams(["resnet18", "efficientnet_lite0", "vit_tiny_patch16_224"], [64, 224], 16, repeats),
            "training": [bench_training("efficientnet_lite0", 64, 50, 500, repeats),
                         bench_training("resnet18", 64, 50, 500, repeats)],
            "data": [bench_data(256, 224, repeats), bench_data(512, 64, repeats, source_size=256)],
            "data_path": [bench_data_path(1024, 224, 128, repeats, "resnet18")],
            "loader": [bench_loader(3072, 224, 128, repeats), bench_loader(5000, 64, 50, repeats)],
            "channels_last": bench_channels_last(["tf_efficientnet_lite0", "resnet18", "resnet50",
                                                  "vit_tiny_patch16_224"], 64, 50, repeats),
            "prepare": [bench_prepare(1000, 224, 512, args.cores, repeats),
                        bench_prepare(2000, 64, 256, args.cores, repeats)],
            "masking": [bench_masking(256, 64, repeats), bench_masking(64, 224, repeats)],
            "imports": bench_imports(3),
            "precision": bench_precision(["resnet18", "efficientnet_lite0", "vit_tiny_patch16_224"], 224, 64, repeats),
        }
    if not args.gpu:
        report["workflow"] = bench_workflow(quick_config(Path(args.workflow_config), Path(args.out)) if args.quick
                                            else Path(args.workflow_config), args.cores)
    report["machine"] = machine()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    titles = {"cams": "compute-CAMs: fast exact path vs pytorch-grad-cam GradCAM (and forward-only ceiling)",
              "training": "Training: stage loop vs bare timm loop on in-memory tensors",
              "data": "Data: prepared uint8 array vs decoding the source JPEGs each epoch",
              "prepare": "Prepare: decoding with 1 thread vs the rule's threads (images/s)",
              "masking": "Mask-and-save: vectorised vs per-image OpenCV loop",
              "imports": "Import time of each stage's module (fresh process)",
              "workflow": "Whole workflow: wall time x cores vs the stages' own time, cold and with warm start",
              "data_path": "Data path at the device: per-worker images/s, numpy path vs uint8 + plan; device side vs a training step",
              "loader": "Loader end to end: uint8 batches the loop receives (gather threads; the DataLoader worker processes they replaced) vs the plain gather",
              "channels_last": "Training step: NCHW vs channels-last memory on this device",
              "precision": "GPU: fp32 vs mixed precision (training step)"}
    md = [f"# Benchmarks\n\nMachine: {report['machine']}. Median of {repeats} repeat(s).\n"]
    for key, title in titles.items():
        if key in report:
            md.append(f"## {title}\n\n{table(report[key])}")
    (out / "bench.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
