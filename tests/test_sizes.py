"""Less data: training sizes as a level of the grid, and the cheap per-epoch curves."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO, ROOT, make_config, snakemake, tiny_config

from proxyattention.analysis.curves import epoch_curve
from proxyattention.data.splits import curve_sample, restrict_to_size, seat_order, train_orders, train_ranks
from proxyattention.settings.sizes import run_datasets, size_messages
from proxyattention.settings.stage_settings import stage_settings
from proxyattention.stages.prepare import prepare


def prepared_with(tmp_path, **dataset):
    config = make_config(datasets={"fm": {"source": "idx", "path": str(DEMO), "image_size": 16, **dataset}})
    out = tmp_path
    prepare(config["datasets"]["fm"], out / "images.npy", out / "index.csv", out / "classes.json", out / "skipped.csv")
    return np.load(out / "images.npy", mmap_mode="r"), pd.read_csv(out / "index.csv", keep_default_na=False)


def training_rows(index, size):
    kept = restrict_to_size(index, size)
    return set(kept.loc[kept.split == "train", "source"])


def test_sizes_are_nested_with_exact_per_class_counts_and_the_same_held_out_rows(tmp_path):
    images, index = prepared_with(tmp_path, train_sizes={"per_class": [3, 10, 30]})
    assert len(images) == 300 + 200  # the largest size's training images and the 200 validation images, no more
    rows = {size: training_rows(index, size) for size in ("n3pc", "n10pc", "n30pc")}
    assert rows["n3pc"] < rows["n10pc"] < rows["n30pc"]
    for size, n in (("n3pc", 3), ("n10pc", 10), ("n30pc", 30)):
        kept = restrict_to_size(index, size)
        assert (kept[kept.split == "train"].label.value_counts() == n).all() and kept.label.nunique() == 10
        # validation (here the verdicts' split) is the same rows at every size
        pd.testing.assert_frame_equal(kept[kept.split == "val"], index[index.split == "val"])
        assert (kept.split == "unused").sum() == 300 - 10 * n


def test_per_class_size_keeps_exactly_train_subsets_images(tmp_path):
    """{per_class: [n]} trains on the images train_subset {per_class: n} keeps (study 2's 5,000)."""
    _, sized = prepared_with(tmp_path / "a", train_sizes={"per_class": [7, 20]})
    _, subset = prepared_with(tmp_path / "b", train_subset={"per_class": 7})
    (tmp_path / "a").mkdir(exist_ok=True)
    assert training_rows(sized, "n7pc") == set(subset.loc[subset.split == "train", "source"])


def test_total_sizes_never_lower_a_class_and_follow_the_shares_on_unbalanced_data():
    counts = np.array([50, 7, 3, 120, 1])
    order = seat_order(counts)
    assert np.array_equal(np.bincount(order, minlength=5), counts)
    taken = np.zeros(5, int)
    for n in range(1, counts.sum() + 1):
        now = np.bincount(order[:n], minlength=5)
        assert (now >= taken).all() and now.sum() == n  # no class ever loses an image as the size grows
        taken = now
        share = counts * n / counts.sum()
        assert (np.abs(now - share) < 1.5 + 1e-9).all()  # within about one image of its share
    # per item: a class's seats follow its seeded ranks, so total sizes nest like per-class ones
    labels = np.repeat(np.arange(5), counts)
    ranks = train_ranks(labels, np.full(len(labels), "train"), seed=3)
    orders = train_orders(labels, ranks)
    for c in range(5):
        members = np.flatnonzero(labels == c)
        assert np.array_equal(np.argsort(orders[members]), np.argsort(ranks[members]))


def test_a_size_too_small_is_refused_before_any_job_and_small_classes_warned():
    config = make_config(datasets={"fm": {"source": "idx", "path": str(DEMO), "image_size": 16,
                                          "train_sizes": {"total": [8, 60, 100]}}},
                         models={"lite0": {"timm_name": "tf_efficientnet_lite0", "weights": "bundled",
                                           "batch_size": 64}})
    errors, warnings = size_messages(config)
    assert len(errors) == 2
    assert "total: 8 leaves 2 of 10 classes without a training image" in errors[0] and "at least 10" in errors[0]
    assert "total: 60 trains on 60 images, fewer than one batch of models.lite0.batch_size 64" in errors[1]
    assert warnings == ["datasets.fm.train_sizes.total: 100: every class has fewer training images (10 each) "
                        "than one batch (64); 100 images in all"]


def test_steps_schedule_trains_each_size_the_largest_sizes_steps():
    sized = {"fm": {"source": "idx", "path": str(DEMO), "image_size": 16, "train_sizes": {"per_class": [5, 15, 50]}}}
    config = make_config(datasets=sized, training={"epochs_finetune": 2, "epochs": 1, "size_schedule": "steps"},
                         cycles=2)
    assert run_datasets(config) == ["fm/n5pc", "fm/n15pc", "fm/n50pc"]
    epochs = {d: [stage_settings(config, d, "lite0", c, "train", "proxy")["epochs"] for c in range(3)]
              for d in run_datasets(config)}
    assert epochs == {"fm/n5pc": [20, 10, 10], "fm/n15pc": [7, 3, 3], "fm/n50pc": [2, 1, 1]}
    same = make_config(datasets=sized, training={"epochs_finetune": 2, "epochs": 1}, cycles=2)
    assert stage_settings(same, "fm/n5pc", "lite0", 0, "train")["epochs"] == 2  # size_schedule: epochs
    assert stage_settings(same, "fm/n5pc", "lite0", 0, "train")["train_size"] == "n5pc"
    assert "train_size" not in stage_settings(same, "fm/n5pc", "lite0", 0, "evaluate")


def test_under_full_split_final_every_cycle_before_the_last_is_evaluated_on_the_epoch_sample():
    config = make_config(training={"epochs_finetune": 1, "epochs": 1, "epoch_sample": 100},
                         evaluation={"full_split": "final"}, cycles=3)
    for stage in ("evaluate", "measure"):
        samples = [stage_settings(config, "fm", "lite0", c, stage, arm).get("verdict_sample")
                   for c, arm in [(0, "finetune"), (1, "proxy"), (2, "baseline"), (3, "proxy"), (3, "baseline")]]
        assert samples == [100, 100, 100, None, None], stage
    assert "verdict_sample" not in stage_settings(make_config(cycles=3), "fm", "lite0", 1, "evaluate", "proxy")


def test_epoch_sample_is_stratified_fixed_and_the_same_at_every_size(tmp_path):
    _, index = prepared_with(tmp_path, train_sizes={"per_class": [3, 30]})
    sample = curve_sample(index, 50)
    assert len(sample) == 50 and np.array_equal(sample, curve_sample(index, 50))
    labels = index.set_index("index").loc[sample, "label"]
    assert (labels.value_counts() == 5).all()  # 20 validation images per class: 5 each
    assert set(sample) <= set(index.loc[index.split == "val", "index"])
    for size in ("n3pc", "n30pc"):
        assert np.array_equal(curve_sample(restrict_to_size(index, size), 50), sample)
    assert len(curve_sample(index, "all")) == len(curve_sample(index, 5000)) == 200
    assert len(curve_sample(index, 0)) == 0


def test_two_datasets_by_three_sizes_plan_two_preparations(tmp_path):
    datasets = {name: {"source": "idx", "path": str(DEMO), "image_size": 16,
                       "train_sizes": {"per_class": [5, 15, 50]}} for name in ("fm", "fm.copy")}
    tiny_config(tmp_path, datasets=datasets, arms=["baseline"], seeds=[0], cycles=1,
                models={"lite0": {"timm_name": "tf_efficientnet_lite0", "weights": "bundled", "batch_size": 50}})
    out = snakemake(tmp_path, "-n", "--quiet", "rules").stdout
    counts = dict(line.split()[:2] for line in out.splitlines() if len(line.split()) == 2
                  and line.split()[1].isdigit())
    assert counts["prepare"] == "2" and counts["finetune"] == "6" and counts["retrain"] == "6"


# The shipped config's run: three sizes, every figure drawn. Shared by the tests below.
@pytest.fixture(scope="module")
def sizes_run(tmp_path_factory):
    import yaml

    workdir = tmp_path_factory.mktemp("sizes")
    config = yaml.safe_load((ROOT / "config.sizes.yaml").read_text())
    config["datasets"]["fashion_demo"]["path"] = str(DEMO)
    config["datasets"]["fashion_demo"]["image_size"] = 32
    config["results"] = "results"
    config["arms"] = ["baseline", "proxy", "random_erase"]
    config["cycles"] = 1  # per size, the verdicts' cycle after the finetune: what these tests read (the suite's time)
    config["faithfulness"] = {"enabled": False}  # what is tested here is per size, not the maps' measures
    config["evaluation"] = {**config["evaluation"], "occlusion": False, "maps": False}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = snakemake(workdir)
    (workdir / "run.log").write_text(proc.stdout + proc.stderr)
    return workdir


def test_a_three_size_run_has_one_array_and_per_size_verdicts_and_figures(sizes_run):
    results = sizes_run / "results"
    assert sorted(p.name for p in (results / "prepared").iterdir()) == ["fashion_demo"]
    assert len(np.load(results / "prepared" / "fashion_demo" / "images.npy", mmap_mode="r")) == 500 + 200
    summary = pd.read_csv(results / "summary.csv", keep_default_na=False, na_values=[""])
    assert sorted(summary["size"].unique()) == ["n15pc", "n50pc", "n5pc"]
    assert summary.groupby("size").n_train.unique().map(list).to_dict() == {"n5pc": [50], "n15pc": [150],
                                                                             "n50pc": [500]}
    for size in ("n5pc", "n15pc", "n50pc"):
        verdicts = pd.read_csv(results / "tables" / "fashion_demo" / f"{size}_verdicts.csv")
        assert set(verdicts.dataset) == {f"fashion_demo/{size}"} and "proxy - random_erase" in set(verdicts.comparison)
        assert (results / "tables" / "fashion_demo" / f"{size}_answer.md").exists()
    for name in ("effect_by_size", "learning_curves", "time_to_target"):
        from PIL import Image

        with Image.open(results / "figures" / f"{name}.png") as image:
            assert image.size[0] > 300 and image.size[1] > 200


def test_the_verdicts_cycle_is_on_the_whole_split_and_earlier_ones_on_the_epoch_sample(sizes_run):
    runs = sizes_run / "results" / "runs" / "fashion_demo"
    for size in ("n5pc", "n50pc"):
        for seed in (0, 1):
            base = runs / size / "tf_efficientnet_lite0" / f"seed{seed}"
            finetune = json.loads((base / "finetune" / "cycle0" / "metrics.json").read_text())
            assert finetune["n_val"] == finetune["verdict_sample"] == 100
            for arm in ("baseline", "proxy"):
                last = json.loads((base / arm / "cycle1" / "metrics.json").read_text())
                assert last["n_val"] == 200 and last["verdict_sample"] is None


def test_every_epoch_curve_uses_the_same_sample_and_its_last_point_is_the_evaluations(sizes_run):
    results = sizes_run / "results"
    index = results / "prepared" / "fashion_demo" / "index.csv"
    tables = list((results / "runs").rglob("epochs.csv"))
    assert len(tables) == 3 * 2 * (1 + 3 * 1)  # sizes x seeds x (the finetune + arms x cycles)
    seen = set()
    for path in tables:
        epochs = pd.read_csv(path)
        if not len(epochs):
            continue
        seen |= set(zip(epochs.curve_split, epochs.curve_images))
        assert epochs.curve_accuracy.iloc[:-1].notna().all() and np.isnan(epochs.curve_accuracy.iloc[-1])
        curve = epoch_curve(path, path.with_name("per_image.npz"), index)
        metrics = json.loads(path.with_name("metrics.json").read_text())
        with np.load(path.with_name("per_image.npz")) as data:
            at = np.isin(data["val_index"], curve_sample(pd.read_csv(index, keep_default_na=False), 100))
            expected = (data["val_prediction"][at] == data["val_label"][at]).mean()
        assert curve.curve_accuracy.iloc[-1] == pytest.approx(expected, abs=1e-12)
        if metrics["verdict_sample"] == 100:  # evaluated on the sample: the same number
            assert curve.curve_accuracy.iloc[-1] == pytest.approx(metrics["accuracy"], abs=1e-12)
    assert seen == {("val", 100)}  # one sample for every epoch, arm, seed and size


def test_the_run_prints_the_report_command_of_its_own_config_and_it_builds(sizes_run):
    """#42.4: a run made with --configfile prints the report command with it (a bare
    `snakemake --report` reads the demo's config, another run's results)."""
    printed = "Build the report with: snakemake --report results/report.html --configfile config.yaml"
    assert printed in (sizes_run / "run.log").read_text()
    snakemake(sizes_run, "--report", "results/report.html")  # those words (the helper adds --configfile)
    page = (sizes_run / "results" / "report.html").read_text(errors="replace")
    assert "effect_by_size" in page and "learning_curves" in page


def test_the_reports_front_page_says_what_sizes_ran():
    import yaml
    from test_report_text import front_page

    from proxyattention.settings.validate import validate

    page = front_page(validate(yaml.safe_load((ROOT / "config.sizes.yaml").read_text())))
    assert ("fashion_demo</strong> is trained at 3 sizes, 5, 15, 50 training images per class" in page
            and "the same optimizer steps at every size" in page), page


def test_a_stage_by_hand_names_a_training_size_as_its_dataset():
    """`proxyattention finetune --dataset fm/n5pc ...` runs a size's job; the bare dataset is what
    prepare takes, and a size's job refuses it, naming the datasets it has."""
    from proxyattention.cli import UsageError, check_cell, parse_args, target_of

    sized = {"fm": {"source": "idx", "path": str(DEMO), "image_size": 16, "train_sizes": {"per_class": [5, 50]}}}
    config = make_config(datasets=sized, seeds=[0], cycles=1)
    args = parse_args(["finetune", "--dataset", "fm/n5pc", "--model", "lite0"])
    check_cell(config, args)
    assert target_of(config, args).endswith("runs/fm/n5pc/lite0/seed0/finetune/cycle0/model.safetensors")
    check_cell(config, parse_args(["prepare", "--dataset", "fm"]))
    with pytest.raises(UsageError, match=r"--dataset fm is not in the config's datasets \(it has: fm/n5pc, fm/n50pc\)"):
        check_cell(config, parse_args(["finetune", "--dataset", "fm", "--model", "lite0"]))


def test_adding_a_smaller_size_to_a_finished_run_plans_only_that_size(sizes_run):
    """README: adding a smaller size prepares nothing again and reruns nothing of the other sizes."""
    import subprocess

    import yaml
    from conftest import SNAKEMAKE

    config = yaml.safe_load((sizes_run / "config.yaml").read_text())
    config["datasets"]["fashion_demo"]["train_sizes"] = {"per_class": [5, 10, 15, 50]}
    (sizes_run / "more.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = subprocess.run(SNAKEMAKE + ["-n", "--directory", str(sizes_run), "--configfile",
                                       str(sizes_run / "more.yaml")], capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    planned = {line.split("wildcards: ")[1].split(",")[0] for line in proc.stdout.splitlines()
               if "wildcards: dataset=" in line}
    assert planned == {"dataset=fashion_demo/n10pc"}
    assert "rule prepare:" not in proc.stdout and "rule prepare_masks:" not in proc.stdout


def test_curve_every_keeps_every_nth_point_and_changes_no_weight(sizes_run, tmp_path):
    """training.curve_every (speed-only): the n5pc finetune again by hand with a point every 3rd
    epoch: NaN elsewhere, the same points where kept, and the same checkpoint to the byte."""
    import torch
    import yaml

    from proxyattention.settings.validate import validate
    from proxyattention.stages.train import train

    config = validate(yaml.safe_load((sizes_run / "config.yaml").read_text()))
    results = sizes_run / "results"
    prepared = results / "prepared" / "fashion_demo"
    ran = results / "runs" / "fashion_demo" / "n5pc" / "tf_efficientnet_lite0" / "seed0" / "finetune" / "cycle0"
    settings = stage_settings(config, "fashion_demo/n5pc", "tf_efficientnet_lite0", 0, "train", "finetune")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the rule's job (threads: 1)
    try:
        train(settings, prepared / "images.npy", prepared / "index.csv", prepared / "classes.json",
              tmp_path / "model.safetensors", tmp_path / "model.json", tmp_path / "epochs.csv",
              tmp_path / "train_stats.json", seed=0, out_optimizer=tmp_path / "optimizer.safetensors",
              epoch_sample=100, curve_every=3)
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "model.safetensors").read_bytes() == (ran / "model.safetensors").read_bytes()
    mine, theirs = pd.read_csv(tmp_path / "epochs.csv"), pd.read_csv(ran / "epochs.csv")
    assert len(mine) == len(theirs) == 20
    kept = (mine.epoch % 3 == 0) & (mine.epoch < 20)
    assert mine.curve_accuracy[kept].notna().all() and mine.curve_accuracy[~kept].isna().all()
    np.testing.assert_array_equal(mine.curve_accuracy[kept], theirs.curve_accuracy[kept])
    np.testing.assert_array_equal(mine.train_loss, theirs.train_loss)


def test_the_final_split_needs_an_epoch_sample():
    from proxyattention.settings.schema import ConfigError
    from proxyattention.settings.validate import check_config

    with pytest.raises(ConfigError, match="full_split: final evaluates the finetune .* epoch_sample is 0"):
        check_config(make_config(training={"epoch_sample": 0}, evaluation={"full_split": "final"}))
    check_config(make_config(training={"epoch_sample": 1000, "curve_every": 0}, evaluation={"full_split": "final"}))


def test_the_study_pages_tables_come_from_the_summary_and_verdict_tables(sizes_run, tmp_path):
    """Study 3's page tables (files/study_page.py) read a study's committed files: every size's
    accuracy comparisons as its verdict table has them, each arm's means per cycle as the summary
    has them; a missing verdict table is named with the command that redraws it."""
    import shutil

    from proxyattention.files.study_page import tables

    results = sizes_run / "results"
    made = tables(results)
    assert list(made) == ["accuracy", "verdicts n5pc", "verdicts n15pc", "verdicts n50pc", "measures",
                          "faithfulness", "agreement", "cost", "time to target"]
    summary = pd.read_csv(results / "summary.csv", keep_default_na=False, na_values=[""])
    for size in ("n5pc", "n15pc", "n50pc"):
        verdicts = pd.read_csv(results / "tables" / "fashion_demo" / f"{size}_verdicts.csv")
        accuracy = verdicts[(verdicts.metric == "accuracy") & (verdicts.cycle == verdicts.cycle.max())]
        lines = [line for line in made[f"verdicts {size}"].splitlines() if line.startswith("| ")][1:]
        assert len(lines) == len(accuracy) == 3
        row = accuracy.set_index("comparison").loc["proxy - random_erase"]
        primary = [line for line in lines if "proxy \u2212 random_erase" in line][0]
        assert f"**{100 * row.mean_difference:+.2f}**".replace("-", "\u2212") in primary
        assert f"{row.seeds_higher} / {row.seeds_lower} of 2" in primary
        mine = summary[(summary["size"] == size) & (summary.arm == "proxy")]
        last = mine[mine.cycle == mine.cycle.max()].accuracy.mean()
        assert f"| {size} | proxy | " in made["accuracy"] and f"| {100 * last:.2f} |" in made["accuracy"]
        assert f"| {size} | baseline | " in made["cost"] and made["cost"].count(f"| {size} | baseline |") == 1
    assert [line.split(" | ")[-1] for line in made["cost"].splitlines() if "| baseline |" in line] == ["1.000 |"] * 3
    assert made["faithfulness"].count("\n| n") == 0 and made["agreement"].count("\n| n") == 0  # none measured here
    copy = tmp_path / "study"
    shutil.copytree(results / "tables", copy / "tables")
    shutil.copy(results / "summary.csv", copy / "summary.csv")
    (copy / "tables" / "fashion_demo" / "n15pc_verdicts.csv").unlink()
    with pytest.raises(FileNotFoundError, match="n15pc_verdicts.csv: no verdict table for fashion_demo/n15pc"):
        tables(copy)
