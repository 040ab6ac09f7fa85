"""Scale: each stage that handles every image, at several dataset sizes in one run, each stage in
a process of its own: its time per image (its passes over the images, between its start-up and
its wind-down) and its peak anonymous memory (RssAnon, sampled every 20 ms from /proc). Memory flat in the number of images is the goal (the stage's
peak at the largest size within 1.25x of the smallest's), and so is the time per image.

Anchor: the same stage at the smallest size (memory: the peak at the largest size over the peak at
the smallest; time: the per-image time at the largest size over that at the smallest). The
sizes are 1,000 images and up, so that every size has the same 1,000 classes (the model's head,
the logits, the confusion matrix are then the same size at each, and the per-image time is the
images' alone). The data: N training and N/4 validation images at
224 px (smooth random colour fields, written once as PNGs with masks, a CSV source with its split
column), **1,000 classes** (so per-image and per-logit arrays are not hidden beside the model), a
small timm model with weights none, one training epoch, half the training images selected.
Per-image time: (the stage's own time - its start-up - its wind-down) / N, all three from the
stage itself (runtime/timing.py: its clock starts after its module's imports; its start-up ends
where its passes over the images begin, after the checkpoint is loaded and the CAM built, and its
wind-down begins where they end, before the work that does not grow with the images: a checkpoint
saved, a 1,000-class metrics.json written; a stage that marks neither has neither). The start-up
and the wind-down are printed at each size, with their ratios: they must not grow either (work
that grows with the images and sits in either shows there). The per-image time after start-up
alone (wind-down included) is printed too, and the line through the smallest and largest sizes'
times on the images: its slope is what each added image costs (marginal ms/img), its intercept the
seconds paid once inside the passes (fixed s: first calls that build kernels and thread pools),
which make the per-image time at the smaller size the larger. The examples figure draws six
images at every size: its time is not per image (no ratio).

With ``--repeats R`` every stage runs R times at each size, one after the other on the same files,
and the fastest run counts (each run's peak memory is kept; the highest counts): a run's time on
this machine varies by tens of percent with what the page cache holds and the disk writes back,
always upwards, so the minimum is the time of the work.

``--stages a,b`` measures only those stages, on the files an earlier run with the same ``--out``
left (each stage reads what the stages before it wrote there): a stage changed since that run is
measured again without the others.

    python bench/scaling.py [--sizes 1000,8000] [--repeats 1] [--stages all] [--model mobilenetv3_small_050] [--out DIR]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["prepare", "prepare_masks", "finetune", "find_misclassified", "compute_cams", "mask_and_save", "evaluate",
          "examples"]
FIXED = {"examples"}  # stages whose work does not grow with the images


def make_source(folder: Path, n_train: int, n_val: int, size: int = 224, classes: int = 1000) -> Path:
    """PNG images (and masks) of smooth random colour fields, and the CSV source listing them: image
    i of class i mod ``classes`` (fewer classes when there are fewer training images: every class
    must have one)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_train + n_val):
        image, mask = folder / f"{i}.png", folder / f"{i}_mask.png"
        if not image.exists():
            rng = np.random.default_rng(i)  # image i is the same whichever size made it first
            small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            cv2.imwrite(str(image), cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR))
            blob = np.zeros((size, size), np.uint8)
            cv2.circle(blob, tuple(int(v) for v in rng.integers(40, size - 40, 2)), 40, 255, -1)
            cv2.imwrite(str(mask), blob)
        rows.append(f"{i}.png,c{i % min(classes, n_train):04d},{'train' if i < n_train else 'val'},{i}_mask.png")
    table = folder / f"source_{n_train}.csv"
    table.write_text("path,label,split,mask\n" + "\n".join(rows) + "\n")
    return table


def config_for(source: Path, model: str) -> dict:
    sys.path.insert(0, str(ROOT / "workflow"))
    from proxyattention.settings.validate import validate

    return validate({
        "datasets": {"s": {"source": "csv", "path": str(source), "image_size": 224, "masks": None}},
        "models": {"m": {"timm_name": model, "weights": "none", "batch_size": 32, "target_layer": "auto"}},
        "training": {"epochs_finetune": 1, "epochs": 1, "num_workers": 0, "augment": {"hflip": False,
                                                                                       "crop_padding": 0}},
        "proxy": {"cam_method": "gradcam", "selection": {"rule": "both", "confidence_below": 0.999,
                                                          "max_fraction": 0.5}},
        "evaluation": {"occlusion_sample": "10%", "map_sample": "10%"},
        "cycles": 1, "seeds": [0],
    })


def stage_call(stage: str, config: dict, work: Path):
    """Import one stage and return the call that runs it on the files of ``work`` (in the measured
    process: the stage module's imports, torch's and timm's among them where it needs them, several
    seconds that vary from run to run, happen here, before its clock starts). No other library is
    imported ahead: the process's memory is the stage's own."""
    from proxyattention.settings.stage_settings import stage_settings

    spec = config["datasets"]["s"]
    p = {k: work / v for k, v in [("images", "images.npy"), ("index", "index.csv"), ("classes", "classes.json"),
                                  ("masks", "masks.npy"), ("weights", "model.safetensors"), ("meta", "model.json"),
                                  ("stats", "train_stats.json"), ("selected", "selected.csv"), ("cams", "cams.npz")]}
    if stage == "prepare":
        from proxyattention.stages.prepare import prepare

        def run():
            prepare(spec, p["images"], p["index"], p["classes"], work / "skipped.csv", threads=2)
        return run
    elif stage == "prepare_masks":
        from proxyattention.stages.prepare_masks import prepare_masks

        def run():
            prepare_masks({**spec, "masks": None}, p["index"], p["masks"], threads=2)
        return run
    elif stage == "finetune":
        from proxyattention.stages.train import train

        def run():
            train(stage_settings(config, "s", "m", 0, "train"), p["images"], p["index"], p["classes"], p["weights"],
                  p["meta"], work / "epochs.csv", p["stats"], seed=0, epoch_sample=0)
        return run
    elif stage == "find_misclassified":
        from proxyattention.stages.find_misclassified import find_misclassified

        def run():
            find_misclassified(stage_settings(config, "s", "m", 1, "find_misclassified", "proxy"), p["images"],
                               p["index"], p["weights"], p["meta"], work / "predictions.csv", p["selected"])
        return run
    elif stage == "compute_cams":
        from proxyattention.stages.compute_cams import compute_cams

        def run():
            compute_cams(stage_settings(config, "s", "m", 1, "compute_cams", "proxy"), p["images"], p["index"],
                         p["weights"], p["meta"], p["selected"], p["cams"], work / "cams.csv")
        return run
    elif stage == "mask_and_save":
        from proxyattention.stages.mask_and_save import mask_and_save

        def run():
            mask_and_save(stage_settings(config, "s", "m", 1, "mask_and_save", "proxy"), p["images"], p["index"],
                          p["classes"], p["cams"], work / "erased", work / "erased.npz", work / "erased.csv",
                          seed=[0, 1])
        return run
    elif stage == "evaluate":  # and question 2's measures (the measure stage), as one evaluation did before
        from proxyattention.stages.evaluate import evaluate, measure

        def run():
            evaluate(stage_settings(config, "s", "m", 0, "evaluate"), p["images"], p["index"], p["weights"], p["meta"],
                     p["stats"], work / "metrics.json", out_per_image=work / "per_image.npz")
            measure(stage_settings(config, "s", "m", 0, "measure"), p["images"], p["index"], p["weights"], p["meta"],
                    work / "metrics.json", work / "per_image.npz", work / "measures.json", masks_path=p["masks"])
        return run
    elif stage == "examples":
        from proxyattention.stages.figures import examples

        def run():
            examples(p["images"], p["cams"], work / "erased.npz", p["selected"], p["classes"], work / "examples.png")
        return run
    raise ValueError(f"unknown stage '{stage}'; allowed: {', '.join(STAGES)}")


def anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(stage: str, source: Path, model: str, work: Path) -> dict:
    """One stage in a process of its own: its own seconds, its start-up's, and the peak RssAnon
    sampled."""
    timing = work / f"{stage}.seconds"
    child = subprocess.Popen([sys.executable, __file__, "--stage", stage, "--source", str(source), "--model", model,
                              "--work", str(work), "--timing", str(timing)],
                             env={**os.environ, "PYTHONPATH": str(ROOT / "workflow"), "OMP_NUM_THREADS": "2"})
    peak = 0
    while child.poll() is None:
        peak = max(peak, anon_kib(child.pid))
        time.sleep(0.02)
    if child.returncode != 0:
        raise RuntimeError(f"{stage} failed at {source}")
    return {**json.loads(timing.read_text()), "peak_anon_mib": peak / 1024}


def images_seconds(run: dict) -> float:
    """A run's seconds on its images: between its start-up and its wind-down."""
    return run["seconds"] - run["startup"] - run["winddown"]


def fastest(runs: list[dict]) -> dict:
    """Repeated runs of one stage: the run whose images took least (its seconds, start-up and
    wind-down), the highest peak memory, and every run's seconds on its images."""
    best = min(runs, key=images_seconds)
    return {"seconds": best["seconds"], "startup": best["startup"], "winddown": best["winddown"],
            "peak_anon_mib": max(r["peak_anon_mib"] for r in runs), "runs": [images_seconds(r) for r in runs]}


def table(results: dict[int, dict[str, dict]], stages=STAGES) -> list[dict]:
    """One row per stage: start-up and wind-down seconds, per-image milliseconds on the images
    (and after start-up, wind-down included) and peak MiB at each size; the ratios of the largest
    size's over the smallest's; and the line through the two sizes' times on the images, fixed
    seconds + marginal ms per image (no time ratio or line for a stage whose work does not grow
    with the images)."""
    sizes = sorted(results)
    rows = []
    for stage in stages:
        row = {"stage": stage}
        got = {n: results[n][stage] for n in sizes}
        for n in sizes:
            row[f"start-up s n={n}"] = got[n]["startup"]
        for n in sizes:
            row[f"wind-down s n={n}"] = got[n]["winddown"]
        for n in sizes:
            row[f"ms/img n={n}"] = 1000 * images_seconds(got[n]) / n
        for n in sizes:
            row[f"after start-up ms/img n={n}"] = 1000 * (got[n]["seconds"] - got[n]["startup"]) / n
        for n in sizes:
            row[f"MiB n={n}"] = got[n]["peak_anon_mib"]
        row["memory ratio"] = got[sizes[-1]]["peak_anon_mib"] / got[sizes[0]]["peak_anon_mib"]
        row["time ratio"] = (float("nan") if stage in FIXED
                             else row[f"ms/img n={sizes[-1]}"] / row[f"ms/img n={sizes[0]}"])
        row["after start-up ratio"] = (float("nan") if stage in FIXED else
                                       row[f"after start-up ms/img n={sizes[-1]}"] / row[f"after start-up ms/img n={sizes[0]}"])
        # the line through the smallest and largest sizes' times on the images: what each added image
        # costs, and the seconds that are paid once inside the passes (first calls: kernels, pools)
        small, large = sizes[0], sizes[-1]
        marginal = (images_seconds(got[large]) - images_seconds(got[small])) / (large - small)
        row["fixed s"] = float("nan") if stage in FIXED else images_seconds(got[small]) - marginal * small
        row["marginal ms/img"] = float("nan") if stage in FIXED else 1000 * marginal
        rows.append(row)
    return rows


def bench_scaling(sizes=(1000, 8000), model: str = "mobilenetv3_small_050", out: Path | None = None,
                  repeats: int = 1, stages=STAGES) -> list[dict]:
    if repeats < 1:
        raise ValueError(f"--repeats {repeats}: at least 1")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"--stages {','.join(unknown)}: unknown; allowed: {','.join(STAGES)}")
    stages = [s for s in STAGES if s in stages]  # in the workflow's order: each reads the earlier ones' files
    missing = [n for n in sizes if out is None or not (Path(out) / f"n{n}" / "index.csv").exists()]
    if stages != STAGES and missing:
        raise ValueError(f"--stages {','.join(stages)} measures on the files of an earlier whole run: give --out "
                         f"the folder of a run at sizes {','.join(map(str, sizes))} (it has no "
                         f"{', '.join(f'n{n}/index.csv' for n in missing)})")
    base = Path(out or tempfile.mkdtemp(prefix="bench_scaling_"))
    results = {}
    for n in sizes:
        source = make_source(base / "images", n, n // 4)
        work = base / f"n{n}"
        work.mkdir(parents=True, exist_ok=True)
        results[n] = {stage: fastest([measure(stage, source, model, work) for _ in range(repeats)])
                      for stage in stages}
        if repeats > 1:
            print(f"size {n} every run's seconds on its images: " + ", ".join(
                f"{s} " + "/".join(f"{t:.1f}" for t in r["runs"]) for s, r in results[n].items()), flush=True)
        print(f"size {n}: " + ", ".join(f"{s} {r['seconds']:.1f} s (start-up {r['startup']:.1f}, "
                                        f"wind-down {r['winddown']:.1f}) "
                                        f"{r['peak_anon_mib']:.0f} MiB" for s, r in results[n].items()), flush=True)
    return table(results, stages)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,8000")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each stage per size; the fastest counts")
    parser.add_argument("--stages", default="all", help="comma-separated stages to measure (all: every one); "
                        "a subset needs --out of an earlier whole run")
    parser.add_argument("--model", default="mobilenetv3_small_050")
    parser.add_argument("--out", default=None)
    parser.add_argument("--stage")
    parser.add_argument("--source")
    parser.add_argument("--work")
    parser.add_argument("--timing")
    args = parser.parse_args()
    if args.stage:  # the measured process
        config = config_for(Path(args.source), args.model)
        run = stage_call(args.stage, config, Path(args.work))
        from proxyattention.runtime import timing as stage_timing

        run()
        records = stage_timing.RECORDS  # evaluate and measure: both stages' seconds, start-ups and wind-downs
        if not records:
            raise RuntimeError(f"{args.stage} logged no stage time")
        Path(args.timing).write_text(json.dumps({key: sum(r[key] for r in records)
                                                 for key in ("seconds", "startup", "winddown")}))
    else:
        import pandas as pd

        chosen = STAGES if args.stages == "all" else args.stages.split(",")
        table = pd.DataFrame(bench_scaling(tuple(int(s) for s in args.sizes.split(",")), args.model, args.out,
                                           args.repeats, chosen))
        print(table.to_string(index=False, float_format="{:.4g}".format))
