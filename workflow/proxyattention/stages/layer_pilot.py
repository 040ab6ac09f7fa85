"""Which layer should the maps come from? A pilot, before a study fixes ``target_layer``.

    python -m proxyattention.stages.layer_pilot --config config.yaml [more.yaml] --dataset D --model M [--seed 0]
        [--layers blocks.2,blocks.4] [--sample 32] [--out results/layer_pilot]

For one finetuned checkpoint (the run folder's ``finetune/cycle0``: run the workflow, or
``proxyattention finetune ...``, first), on a seeded sample of training images, each candidate
layer's map size at the dataset's image size and the faithfulness of the config's CAM method at
that layer (analysis/faithfulness.py): ROAD combined and most-relevant-first for the maps, the
same maps moved to a random place of the same shape, and the maps of the model with its head and
last stage re-initialised (with their rank correlation). Candidates (without ``--layers``): each
stage's output, from timm's ``feature_info`` (an EfficientNet's ``blocks.N``, a ResNet's
``layerN``), and the layer the config names. Writes ``<dataset>_<model>_layers.csv`` and ``.png``.

``--list`` prints the candidates and their map sizes without a checkpoint (a model built from
its config entry with random weights: sizes do not depend on them).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis import faithfulness as fa
from ..data.splits import restrict_to_size
from ..data.streams import FAITHFULNESS, generator
from ..files import layout
from ..files.artifacts import load_prepared
from ..files.atomic import atomic_path, write_csv
from ..models.cams import build_cam, candidate_layers, compute_maps, explained_grid, release
from ..settings.sizes import base_of, run_datasets, size_of


def pilot(config: dict, dataset: str, model_name: str, seed: int = 0, layers: list[str] | None = None,
          sample: int = 32, out_dir=None) -> pd.DataFrame:
    """The pilot's table (one row per layer); writes it and its figure into ``out_dir``."""
    import torch

    from ..models.build import load_checkpoint
    from ..settings.stage_settings import stage_settings

    results = config["results"]
    folder = Path(layout.run_dir(results, dataset, model_name, seed, layout.FINETUNE, 0))
    weights, meta = folder / "model.safetensors", folder / "model.json"
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: no finetuned checkpoint; run the workflow (or proxyattention finetune "
                                f"--dataset {dataset} --model {model_name} --seed {seed}) first")
    prepared = Path(layout.prepared_dir(results, base_of(dataset)))
    images, index = load_prepared(prepared / "images.npy", prepared / "index.csv")
    index = restrict_to_size(index, size_of(dataset), str(prepared / "index.csv"))
    size = images.shape[1]
    settings = stage_settings(config, dataset, model_name, 1, "faithfulness", "proxy")
    method, batch = settings["proxy"]["cam_method"], settings["model"]["batch_size"]
    model, info = load_checkpoint(weights, meta)
    model.eval()
    if layers is None:
        layers = [name for name, _ in candidate_layers(model, size, settings["model"]["target_layer"])]
    train = index[index.split == "train"]
    rng = generator((seed, 0), FAITHFULNESS, 4)
    chosen = train.iloc[np.sort(rng.choice(len(train), size=min(sample, len(train)), replace=False))]
    rows, labels = chosen["index"].to_numpy(), chosen["label"].to_numpy()
    from ..data.batches import ArraySource, make_loader

    loader, _ = make_loader(ArraySource([(images, rows, labels)]), info["mean"], info["std"], batch)
    inputs = torch.cat([x for x, _ in loader])
    randomised = copy.deepcopy(model)
    fa.randomise_top(randomised, seed)
    table = []
    curves = {}
    for k, layer in enumerate(layers):
        grid = explained_grid(model, layer, size)
        kinds = {}
        for name, net in (("own", model), ("random_model", randomised)):
            cam = build_cam(net, method, layer, size, True, batch)
            try:
                kinds[name] = np.concatenate([compute_maps(cam, net, inputs[s:s + batch], labels[s:s + batch].tolist())
                                              for s in range(0, len(rows), batch)])
            finally:
                release(cam)
        constant = fa.constant_maps(kinds["own"])
        kinds["moved"] = fa.moved_maps(kinds["own"], fa.draw_offsets(len(rows), size, size,
                                                                     generator((seed, 0), FAITHFULNESS, 5, k)))
        keep = np.flatnonzero(~constant)
        row = {"layer": layer, "map_h": grid[0], "map_w": grid[1], "method": method, "n_images": len(keep),
               "n_constant_maps": int(constant.sum())}
        tie_rng = generator((seed, 0), FAITHFULNESS, 6, k)
        for j, name in enumerate(("own", "moved", "random_model")):
            if not len(keep):
                row[f"road_combined_{name}"] = row[f"road_morf_{name}"] = np.nan
                continue
            ranks = fa.tie_broken_ranks(kinds[name][keep], tie_rng)
            scored = [fa.road_curves(model, inputs[keep][s:s + batch], ranks[s:s + batch], labels[keep][s:s + batch],
                                     seed * 10 + j, settings["faithfulness"]["percentiles"])
                      for s in range(0, len(keep), batch)]
            morf = np.concatenate([c["morf"] for c in scored])
            row[f"road_combined_{name}"] = float(np.concatenate([c["combined"] for c in scored]).mean())
            row[f"road_morf_{name}"] = float(morf.mean())
            curves[(layer, name)] = morf.mean(0)
        corr = fa.spearman(kinds["own"][keep], kinds["random_model"][keep])
        row["random_model_rank_corr"] = float(np.nanmean(corr)) if np.isfinite(corr).any() else np.nan
        row["own_minus_moved"] = row["road_combined_own"] - row["road_combined_moved"]
        table.append(row)
    frame = pd.DataFrame(table)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / f"{dataset}_{model_name}_layers.csv", frame)
        _figure(frame, curves, settings["faithfulness"]["percentiles"], out / f"{dataset}_{model_name}_layers.png",
                f"{dataset} / {model_name}: {method} at each layer, {len(rows)} training images, seed {seed}")
    return frame


def _figure(frame: pd.DataFrame, curves: dict, percentiles, png, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    removed = [100 - p for p in percentiles]
    for i, layer in enumerate(frame.layer):
        colour = plt.cm.viridis(i / max(1, len(frame) - 1))
        for name, style in (("own", "-"), ("moved", "--")):
            if (layer, name) in curves:
                axes[0].plot(removed, curves[(layer, name)], ls=style, color=colour, marker="o", ms=3,
                             label=f"{layer} {name}" if name == "own" else None)
    axes[0].set(xlabel="% of pixels removed, most relevant first (dashed: the maps moved)",
                ylabel="change of p(label)", title="ROAD, most relevant first")
    axes[0].legend(fontsize=7)
    ys = np.arange(len(frame))
    axes[1].barh(ys - 0.2, frame.road_combined_own, height=0.4, label="own maps")
    axes[1].barh(ys + 0.2, frame.road_combined_moved, height=0.4, label="moved maps")
    axes[1].set_yticks(ys, [f"{r.layer} ({r.map_h} x {r.map_w})" for r in frame.itertuples()], fontsize=8)
    axes[1].set(xlabel="ROAD combined (higher: more faithful)", title="own against moved maps")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    for path in (Path(png),):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def main(argv=None) -> None:
    from ..settings.schema import ConfigError
    from ..settings.validate import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", default=["config.yaml"],
                        help="config file(s), merged as snakemake --configfile merges them")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", help="comma-separated module names (default: each stage's output)")
    parser.add_argument("--sample", type=int, default=32, help="training images (default 32)")
    parser.add_argument("--out", default=None, help="folder for the table and figure (default: <results>/layer_pilot)")
    parser.add_argument("--list", action="store_true", help="only list the candidate layers and their map sizes")
    args = parser.parse_args(argv)
    try:
        config = load_config(*args.config)
    except ConfigError as err:
        sys.exit(str(err))
    names = {"dataset": run_datasets(config), "model": list(config["models"])}
    for kind, name in (("dataset", args.dataset), ("model", args.model)):
        if name not in names[kind]:
            sys.exit(f"--{kind} {name} is not in {' + '.join(args.config)}'s {kind}s ({', '.join(names[kind])})")
    spec, size = config["models"][args.model], config["datasets"][base_of(args.dataset)]["image_size"]
    if args.list:
        from ..models.build import create_model

        model = create_model(spec["timm_name"], "none", 10, size)
        print(f"{args.model} at {size} px: layer, map size (h x w)")
        for name, (h, w) in candidate_layers(model.eval(), size, spec["target_layer"]):
            print(f"  {name:<24} {h} x {w}" + ("   (the config's target_layer)" if name == spec["target_layer"] else ""))
        return
    layers = args.layers.split(",") if args.layers else None
    out = args.out or str(Path(config["results"]) / "layer_pilot")
    try:
        frame = pilot(config, args.dataset, args.model, args.seed, layers, args.sample, out)
    except FileNotFoundError as err:
        sys.exit(str(err))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(frame.to_string(index=False, float_format="{:.4f}".format))
    print(f"table and figure in {out}/")


if __name__ == "__main__":
    main()
