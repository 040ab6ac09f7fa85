"""Benchmarks of every stage against its anchor, side by side in one process.

    python bench/run.py            # full sizes, 5 repeats, median
    python bench/run.py --quick    # tiny sizes, one repeat (what the test suite runs)

Writes results/bench/bench.md and bench.json (or --out). Each entry measures the
workflow's path and its anchor in the same run, on the same inputs, and reports
the median over repeats and their ratio. The whole-workflow entry runs the demo
config (--workflow-config) twice in a temporary folder, cold and with warm start,
about 13 minutes on a 2-core CPU. No thresholds: this reports, tests assert.

One module per benchmark beside this runner, each naming its anchor in its docstring;
measure.py holds the timing helpers they share.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
from channels_last import bench_channels_last
from compute_cams_fast_path import bench_cams
from device_data_path import bench_data_path
from erasing import bench_masking
from gpu_precision import bench_precision
from loader_threads import bench_loader
from prepare_threads import bench_prepare
from prepared_arrays import bench_data
from stage_imports import bench_imports
from training_loop import bench_training
from training_pass import bench_cycle_saving, bench_recording
from warm_start import bench_workflow, quick_config

from measure import ROOT

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
            "recording": bench_recording("resnet18", 32, 16, 32, repeats, methods=("gradcam_loss",)),
            "record_saving": [bench_cycle_saving(64, 32, 8, 2, repeats, batch=16)],
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
            # the recorder in the last epoch: lite0 at 64 px (the demo's and study 2's), resnet18 at 224 px
            "recording": bench_recording("tf_efficientnet_lite0", 64, 50, 1000, repeats)
            + bench_recording("resnet18", 224, 32, 256, repeats),
            # study 2's size: 5,000 images at 64 px, about 150 selected per cycle, 2 epochs a cycle
            "record_saving": [bench_cycle_saving(5000, 64, 150, 2, repeats)],
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
              "precision": "GPU: fp32 vs mixed precision (training step)",
              "recording": "Training-pass record: an epoch with the recorder vs the same epoch without it",
              "record_saving": "A cycle's separate passes (find + CAM) vs the record's stages, beside a training epoch"}
    md = [f"# Benchmarks\n\nMachine: {report['machine']}. Median of {repeats} repeat(s).\n"]
    for key, title in titles.items():
        if key in report:
            md.append(f"## {title}\n\n{table(report[key])}")
    (out / "bench.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
