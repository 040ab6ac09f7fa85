"""``proxyattention``: run one stage by hand, on the files the workflow uses.

    proxyattention STAGE --config config.yaml --dataset D [--model M --seed S --arm A --cycle C]

Paths come from :mod:`proxyattention.layout`, as in the Snakemake rules, so a
stage that failed in the workflow can be rerun (or debugged) alone. Stages:
prepare, finetune, retrain, find-misclassified, compute-cams, mask-and-save, evaluate.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import layout

STAGES = ["prepare", "finetune", "retrain", "find-misclassified", "compute-cams", "mask-and-save", "evaluate"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="proxyattention", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--config", default="config.yaml", help="workflow config (default: config.yaml)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arm", default=layout.FINETUNE, choices=[layout.FINETUNE, "baseline", "proxy", "random_erase"])
    parser.add_argument("--cycle", type=int, default=0)
    parser.add_argument("--device", help="torch device, e.g. cuda:1 (default: cuda if available, else cpu)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .config import ConfigError, load_config, stage_settings

    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = config["results"]
    prep = layout.prepared_dir(results, args.dataset)
    images, index, classes = f"{prep}/images.npy", f"{prep}/index.csv", f"{prep}/classes.json"
    if args.stage == "prepare":
        from .prepare import prepare

        prepare(config["datasets"][args.dataset], images, index, classes, f"{prep}/skipped.csv")
        return 0
    if args.model is None:
        print("error: --model is required for this stage", file=sys.stderr)
        return 2
    cell = (args.dataset, args.model, args.seed, args.arm, args.cycle)
    run = layout.run_dir(results, *cell)
    prev = layout.previous_run_dir(results, *cell) if args.cycle > 0 else None

    def settings(stage):
        return stage_settings(config, args.dataset, args.model, args.cycle, stage)

    if args.stage in ("finetune", "retrain"):
        from .train import train

        start = {}
        if args.stage == "retrain" and config["training"]["retrain_from"] == "previous":
            start = {"init_weights": f"{prev}/model.safetensors", "init_meta": f"{prev}/model.json"}
        train(settings("train"), images, index, classes, f"{run}/model.safetensors", f"{run}/model.json",
              f"{run}/epochs.csv", f"{run}/train_stats.json", seed=args.seed,
              extra=layout.erased_for_training(results, config["training"]["accumulate"], *cell),
              num_workers=config["training"]["num_workers"], device=args.device, **start)
    elif args.stage == "find-misclassified":
        from .misclassified import find_misclassified

        find_misclassified(settings("find_misclassified"), images, index, f"{prev}/model.safetensors",
                           f"{prev}/model.json", f"{run}/predictions.csv", f"{run}/selected.csv", device=args.device)
    elif args.stage == "compute-cams":
        from .compute_cams import compute_cams

        compute_cams(settings("compute_cams"), images, index, f"{prev}/model.safetensors", f"{prev}/model.json",
                     f"{run}/selected.csv", f"{run}/cams.npz", f"{run}/cams.csv", device=args.device)
    elif args.stage == "mask-and-save":
        from .masking import mask_and_save

        mask_and_save(settings("mask_and_save"), images, index, classes, f"{run}/cams.npz", f"{run}/erased",
                      f"{run}/erased.npz", f"{run}/erased.csv", control=layout.erase_control(args.arm),
                      seed=layout.mask_seed(args.seed, args.cycle))
    elif args.stage == "evaluate":
        from .evaluate import evaluate

        evaluate(settings("evaluate"), images, index, f"{run}/model.safetensors", f"{run}/model.json",
                 f"{run}/train_stats.json", f"{run}/metrics.json", device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
