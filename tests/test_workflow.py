"""The whole DAG on a tiny config, through the Snakemake command line."""

import io
import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, SNAKEMAKE, kept_as_was, run_dir, snakemake, tiny_config, user_command

from proxyattention.files.report import FIGURE_NAMES
from proxyattention.runtime.timing import PATTERN


@pytest.mark.slow
def test_whole_dag_produces_the_summary_and_figures(tiny_run):
    summary = pd.read_csv(tiny_run / "results" / "summary.csv")
    # 2 seeds x (finetune + 3 arms x 2 cycles)
    assert len(summary) == 2 * (1 + 3 * 2)
    assert not summary.duplicated(["dataset", "model", "arm", "seed", "cycle"]).any()
    assert summary.accuracy.between(0, 1).all() and summary.ran.all()
    assert (summary.n_skipped_images == 0).all() and (summary.run_dir_mib > 0).all()
    proxy, duplicate = summary[summary.arm == "proxy"], summary[summary.arm == "duplicate"]
    assert (proxy.n_erased > 0).all()
    for arm, rows in (("proxy", proxy), ("duplicate", duplicate)):
        for row in rows.itertuples():  # each cycle stores only the images it added
            erased = np.load(run_dir(tiny_run, arm, row.seed, row.cycle) / "erased.npz")
            assert len(erased["labels"]) == row.n_added == row.n_selected - row.n_empty_maps
            table = pd.read_csv(run_dir(tiny_run, arm, row.seed, row.cycle) / "erased.csv")
            assert not table.loc[table.empty_map, "added"].any()  # no empty map joins training by default
    # proxy adds no empty map; what it adds unchanged is counted as such: a black fill whose mask lies
    # on the black background of Fashion-MNIST changes no pixel (#22.3)
    for row in proxy.itertuples():
        folder = run_dir(tiny_run, "proxy", row.seed, row.cycle)
        table = pd.read_csv(folder / "erased.csv")
        added = table[table.added].reset_index(drop=True)
        unchanged = added.changed_fraction == 0
        assert row.n_added_unchanged == unchanged.sum() and row.n_erased == (~unchanged).sum()
        assert (added.loc[unchanged, "erased_fraction"] > 0).all()  # a mask, over pixels already black
        saved = np.load(folder / "erased.npz")
        images = np.load(tiny_run / "results" / "prepared" / "fm" / "images.npy", mmap_mode="r")
        for i in np.flatnonzero(unchanged):
            np.testing.assert_array_equal(saved["images"][i], images[saved["index"][i]])
            assert (saved["images"][i] == 0).any()
    assert (duplicate.n_erased == 0).all() and (duplicate.n_added == duplicate.n_added_unchanged).all()
    # cycle 1 starts from the one shared finetune: duplicate adds exactly the images proxy adds, unchanged
    for seed in (0, 1):
        dup = np.load(run_dir(tiny_run, "duplicate", seed, 1) / "erased.npz")
        pro = np.load(run_dir(tiny_run, "proxy", seed, 1) / "erased.npz")
        np.testing.assert_array_equal(dup["index"], pro["index"])
        images = np.load(tiny_run / "results" / "prepared" / "fm" / "images.npy")
        np.testing.assert_array_equal(dup["images"], images[dup["index"]])
    assert (summary[summary.arm == "baseline"].n_added == 0).all()
    table = pd.read_csv(tiny_run / "results" / "tables" / "fm_comparison.csv")
    assert {"proxy_mean", "baseline_mean", "duplicate_mean", "proxy_minus_baseline_mean",
            "proxy_minus_baseline_ci_low", "proxy_minus_duplicate_mean", "duplicate_minus_baseline_mean"} <= set(table.columns)
    every_metric = pd.read_csv(tiny_run / "results" / "tables" / "fm_verdicts.csv")
    verdicts = every_metric[every_metric.metric == "accuracy"]  # then #25's measures, each its own rows
    assert list(verdicts.comparison) == ["duplicate - baseline", "proxy - baseline", "proxy - duplicate"]
    assert (every_metric.n_pairs == 2).all() and (every_metric.verdict == "no evidence at this n").all()  # 2 < 3
    proxy = verdicts.set_index("comparison").loc["proxy - baseline"]
    np.testing.assert_allclose(proxy.mean_difference, table.proxy_minus_baseline_mean.iloc[0])
    assert (tiny_run / "results" / "tables" / "fm_verdicts.html").stat().st_size > 500
    for name in FIGURE_NAMES:
        assert (tiny_run / "results" / "figures" / f"{name}.png").stat().st_size > 1000
        assert (tiny_run / "results" / "figures" / f"{name}.svg").exists()
    assert (tiny_run / "results" / "figures" / "examples" / "fm" / "lite0" / "proxy.png").exists()
    assert list((tiny_run / "results" / "logs" / "retrain").rglob("*.log"))
    assert list((tiny_run / "results" / "benchmarks" / "retrain").rglob("*.tsv"))
    # warm_start is on by default: every script job ran as a fork of the server, and says so in its log
    logs = list((tiny_run / "results" / "logs").rglob("*.log"))
    job_logs = [p for p in logs if p.name != "warm_start.log"]
    assert all("running in a fork of the warm-start server" in p.read_text() for p in job_logs)
    assert all(PATTERN.search(p.read_text()) for p in job_logs)  # each logs its own stage time
    assert (summary.peak_memory_kind == "cpu_peak_rss_warm_fork").all()  # not comparable with a cold RSS
    # #22.5: the adding arms' cost includes their own find, CAM and mask stages, read from those jobs' logs
    adding = summary[summary.arm.isin(["proxy", "duplicate"])]
    assert (adding.proxy_seconds > 0).all()
    assert (adding.cumulative_seconds > adding.cumulative_train_seconds).all()
    plain = summary[summary.arm.isin(["baseline", "finetune"])]
    assert (plain.proxy_seconds == 0).all() and (plain.cumulative_seconds == plain.cumulative_train_seconds).all()
    from proxyattention.runtime.timing import last_stage_seconds

    row = summary[(summary.arm == "proxy") & (summary.seed == 0) & (summary.cycle == 2)].iloc[0]
    logs = tiny_run / "results" / "logs"
    expected = sum(last_stage_seconds(logs / stage / "fm" / "lite0" / "seed0" / "proxy" / "cycle2.log", stage)
                   for stage in ("find_misclassified", "compute_cams", "mask_and_save"))
    assert row.proxy_seconds == pytest.approx(expected)
    assert set(summary.kind) == {"finetune", "baseline", "duplicate", "proxy"}
    # #22.14: what made the results, once per run
    made = json.loads((tiny_run / "results" / "provenance.json").read_text())
    from proxyattention.files.provenance import code_commit, config_digest

    assert made["job_commits"] == [code_commit()] and len(made["config_digest"]) == 64
    assert made["config"]["seeds"] == [0, 1] and made["config_digest"] == config_digest(made["config"])
    assert {"torch", "timm", "numpy", "python"} <= set(made["versions"])
    assert made["config_digest"][:12] in (tiny_run / "results" / "tables" / "fm_verdicts.html").read_text()
    # #24: every evaluated image kept, and what the verdicts draw from them
    for row in summary[summary.seed == 0].itertuples():
        folder = run_dir(tiny_run, row.arm, row.seed, row.cycle)
        with np.load(folder / "per_image.npz") as images:
            assert len(images["val_index"]) == row.n_val
            assert (images["val_prediction"] == images["val_label"]).mean() == pytest.approx(row.accuracy)
            assert ((images["val_p_top"] >= images["val_p_true"]) & (images["val_p_top"] <= 1)).all()
            # each image's Brier term: their mean is the summary's Brier score (on the same split)
            assert images["val_brier"].dtype == np.float32
            assert images["val_brier"].astype(np.float64).mean() == pytest.approx(row.brier, rel=1e-6)
    assert (verdicts.boot_resamples == 0).all() and verdicts.boot_low.isna().all()  # 2 seed pairs: none
    assert verdicts.disagreement.between(0, 1).all()
    assert {"mde", "pairs_needed", "verdict_holm", "p_holm"} <= set(verdicts.columns)
    # #25: Question 2's measures in every evaluation, with verdicts like accuracy's
    assert summary.occlusion_auc.between(0, 1).all() and summary.ece.between(0, 1).all()
    from proxyattention.analysis.attention_measures import sample_rows

    for row in summary[summary.seed == 1].itertuples():  # level 0 is the plain accuracy on the fixed sample
        with np.load(run_dir(tiny_run, row.arm, row.seed, row.cycle) / "per_image.npz") as images:
            chosen = sample_rows(images["val_index"], "10%")  # the default: a tenth of the split
            right = images["val_prediction"][chosen] == images["val_label"][chosen]
        assert row.n_occlusion == round(0.1 * row.n_val) == len(chosen) and row.occlusion_0 == pytest.approx(right.mean())
    assert (summary.occlusion_80 <= summary.occlusion_0 + 0.2).all() and summary.map_entropy.between(0, 1).all()
    assert (summary.n_maps == (0.1 * summary.n_val).round()).all() and summary.pretrained.str.startswith("bundled").all()
    assert set(every_metric.metric) == {"accuracy", "occlusion_auc", "ece", "brier", "map_top10_mass", "map_entropy",
                                        "road_combined"}
    assert len(every_metric) == 6 * len(verdicts) + 2 * 2  # + own minus moved and minus randomised maps, 2 cycles
    answer = (tiny_run / "results" / "tables" / "fm_answer.md").read_text()
    assert answer.startswith("fm / lite0, does Proxy Attention help") and "seed pairs" in answer


@pytest.mark.slow
def test_report_gathers_the_figures(tiny_run):
    snakemake(tiny_run, "--report", str(tiny_run / "report.zip"))
    import zipfile

    names = zipfile.ZipFile(tiny_run / "report.zip").namelist()
    assert any(n.endswith("accuracy_by_cycle.png") for n in names)
    assert any(n.endswith("summary.csv") for n in names)


@pytest.mark.slow
def test_split_is_the_same_for_every_cycle_and_arm(tiny_run):
    """Every stage reads the one prepared split, and proxy trains only on training images."""
    index = pd.read_csv(tiny_run / "results" / "prepared" / "fm" / "index.csv", keep_default_na=False)
    train_rows = set(index.loc[index.split == "train", "index"])
    val_hashes = set(index.loc[index.split == "val", "sha1"])
    for seed in (0, 1):
        for cycle in (1, 2):
            predictions = pd.read_csv(run_dir(tiny_run, "proxy", seed, cycle) / "predictions.csv")
            assert set(predictions["index"]) == train_rows
            erased = pd.read_csv(run_dir(tiny_run, "proxy", seed, cycle) / "erased.csv")
            assert set(erased["index"]) <= train_rows
    metrics = [json.loads((run_dir(tiny_run, arm, 0, c) / "metrics.json").read_text())
               for arm, c in (("finetune", 0), ("baseline", 1), ("proxy", 2))]
    assert len({m["n_val"] for m in metrics}) == 1
    import hashlib

    images = np.load(tiny_run / "results" / "prepared" / "fm" / "images.npy")
    erased = np.load(run_dir(tiny_run, "proxy", 0, 1) / "erased.npz")
    sources = {hashlib.sha1(images[i].tobytes()).hexdigest() for i in erased["index"]}
    assert not sources & val_hashes


def job_counts(proc) -> dict:
    counts = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isidentifier() and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.mark.slow
def test_deleting_one_output_recomputes_only_its_dependents(tiny_run):
    """Delete the proxy arm's cycle-1 checkpoint of seed 1 and ask for it again: only its job
    runs; the next full run would update exactly the stages downstream of it. (The retrain's
    outputs are then put back as they were, so the run the other tests share stays finished.)"""
    target = run_dir(tiny_run, "proxy", 1, 1) / "model.safetensors"
    with kept_as_was(target.parent):
        target.unlink()
        relative = str(target.relative_to(tiny_run))
        assert job_counts(snakemake(tiny_run, "-n", relative)) == {"retrain": 1, "total": 1}
        snakemake(tiny_run, relative)
        assert target.exists()
        downstream = job_counts(snakemake(tiny_run, "-n"))
        assert downstream == {"evaluate": 2, "measure": 2, "decide_cycle": 1, "find_misclassified": 1,
                              "compute_cams": 1, "mask_and_save": 1, "faithfulness": 1, "retrain": 1,
                              "aggregate": 1, "figures": 1, "all": 1, "total": 13}, downstream
        # faithfulness: cycle 2's maps only; cycle 1's scores maps of the finetune's model, and waits
        # for its cycle's measures only as an order (an ancient input), so a new cycle-1 model no
        # longer reruns it
    assert job_counts(snakemake(tiny_run, "-n")) == {}


@pytest.mark.slow
def test_editing_a_later_cycles_epochs_retrains_the_run_its_schedule_spans(tiny_run):
    """With cycle_mode: continue (the default) one learning-rate schedule spans the finetune and
    every cycle, so more epochs for cycle 2 change every training job's learning rates: the whole
    run retrains, and the plan says so. (With cycle_mode: restart only cycle 2 would:
    tests/test_schedules.py checks the settings that decide it.) Nothing else in the config changed:
    the stages that read no schedule (none before a retrain) keep their params."""
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    original = (tiny_run / "config.yaml").read_text()
    config["training"]["epochs"] = [1, 2]
    config["training"]["accumulate"] = True  # the default, written out: not a change
    (tiny_run / "config.yaml").write_text(yaml.safe_dump(config))  # keys sorted: an order change is no change
    try:
        counts = job_counts(snakemake(tiny_run, "-n"))
        assert counts["finetune"] == 2 and counts["retrain"] == 2 * 3 * 2, counts  # every job of the run
        assert "prepare" not in counts
    finally:
        (tiny_run / "config.yaml").write_text(original)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("stopped")
    config = tiny_config(workdir, seeds=[0], arms=["baseline", "proxy"], stop_when={"target_accuracy": 0.01})
    spec = yaml.safe_load(config.read_text())
    spec["datasets"]["fm"]["test_fraction"] = 0.1  # a held-out test split for the verdicts
    config.write_text(yaml.safe_dump(spec, sort_keys=False))
    snakemake(workdir)
    return workdir


@pytest.mark.slow
def test_stop_rule_skips_later_cycles(stopped_run):
    summary = pd.read_csv(stopped_run / "results" / "summary.csv")
    later = summary[(summary.cycle > 0) & (summary.arm == "proxy")]
    assert len(later) == 2 and not later.ran.any()
    assert (later.train_seconds == 0).all() and (later.n_erased == 0).all()
    assert later.stop_reason.iloc[0].endswith("reached target 0.01")
    assert later.stop_reason.iloc[1] == "an earlier cycle was already stopped"
    first = summary[summary.cycle == 0].accuracy.iloc[0]
    assert (later.accuracy == first).all()  # the checkpoint carried over unchanged


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory):
    """Three seeds, baseline and proxy, one cycle that runs, and a held-out test split."""
    workdir = tmp_path_factory.mktemp("held_out")
    config = tiny_config(workdir, seeds=[0, 1, 2], arms=["baseline", "proxy"], cycles=1)
    spec = yaml.safe_load(config.read_text())
    spec["datasets"]["fm"]["test_fraction"] = 0.1
    config.write_text(yaml.safe_dump(spec, sort_keys=False))
    snakemake(workdir)
    return workdir


@pytest.mark.slow
def test_verdicts_use_the_held_out_test_split_when_there_is_one(held_out_run):
    """test_fraction holds out part of each class's training images: never trained on, selected,
    explained or erased, and the verdicts, the comparison table and the figures are on it."""
    from proxyattention.analysis.power import mean_ci
    from proxyattention.analysis.verdicts import verdict

    index = pd.read_csv(held_out_run / "results" / "prepared" / "fm" / "index.csv", keep_default_na=False)
    counts = index.split.value_counts()
    assert counts["test"] == sum(round(0.1 * n) for n in index[index.split != "val"].groupby("label").size())
    test_rows = set(index.loc[index.split == "test", "index"])
    train_rows = set(index.loc[index.split == "train", "index"])
    metrics = json.loads((run_dir(held_out_run, "finetune", 0, 0) / "metrics.json").read_text())
    assert metrics["test"]["n_test"] == counts["test"] and metrics["n_val"] == counts["val"]
    for seed in (0, 1, 2):
        folder = run_dir(held_out_run, "proxy", seed, 1)
        assert set(pd.read_csv(folder / "predictions.csv")["index"]) == train_rows  # only training images
        selected = set(pd.read_csv(folder / "selected.csv")["index"])
        assert selected and not selected & test_rows
        assert not set(np.load(folder / "cams.npz")["index"]) & test_rows
        assert not set(np.load(folder / "erased.npz")["index"]) & test_rows
        stats = json.loads((folder / "train_stats.json").read_text())
        assert stats["n_train_original"] == counts["train"] and stats["n_train_extra"] > 0
    summary = pd.read_csv(held_out_run / "results" / "summary.csv")
    np.testing.assert_allclose(summary[(summary.cycle == 0) & (summary.seed == 0)].test_accuracy,
                               metrics["test"]["accuracy"])
    every_metric = pd.read_csv(held_out_run / "results" / "tables" / "fm_verdicts.csv")
    verdicts = every_metric[every_metric.metric == "test_accuracy"]
    assert verdicts.comparison.tolist() == ["proxy - baseline"]
    assert every_metric.metric.tolist()[0] == "test_accuracy" and len(every_metric) == 6 + 2  # + the maps' faithfulness
    assert verdicts.split.iloc[0] == ("a test split drawn from the training images by test_fraction 0.1, split_seed 0 "
                                      "(held out from training, selection and the stop rule)")
    assert verdicts.n_pairs.iloc[0] == 3
    last = summary[summary.cycle == 1].pivot_table(index="seed", columns="arm", values="test_accuracy")
    mean, low, high, n = mean_ci(last.proxy - last.baseline)  # recomputed from the test column
    assert verdicts.mean_difference.iloc[0] == pytest.approx(mean) and verdicts.verdict.iloc[0] == verdict(low, high, n)
    row = verdicts.iloc[0]  # #24: from 3 seed pairs, the bootstrap over seeds and test images
    assert row.boot_resamples == 2000 and row.boot_low <= row.mean_difference <= row.boot_high
    assert 0 <= row.disagreement <= 1
    table = pd.read_csv(held_out_run / "results" / "tables" / "fm_comparison.csv")
    assert table.metric.tolist() == ["test_accuracy"] and table.proxy_mean.iloc[0] == pytest.approx(last.proxy.mean())


def test_default_config_dry_run_shows_the_full_grid():
    proc = subprocess.run(SNAKEMAKE + ["-n", "--forceall", "--quiet", "rules"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    n_runs = len(config["models"]) * len(config["seeds"])
    lines = [line.split() for line in (proc.stdout + proc.stderr).splitlines()]
    assert ["finetune", str(n_runs)] in lines
    assert ["evaluate", str(n_runs * (1 + len(config["arms"]) * config["cycles"]))] in lines


def test_lint_has_no_errors():
    proc = subprocess.run(SNAKEMAKE + ["--lint"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_bad_config_stops_before_any_job(tmp_path):
    tiny_config(tmp_path, cycles="two")
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "invalid config at 'cycles'" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def by_hand(workdir, stage, *args):
    """The README's by-hand command, as a user types it in the run's folder."""
    return subprocess.run(user_command("proxyattention", stage, "--config", "config.yaml", *args),
                          cwd=workdir, capture_output=True, text=True)


# stage -> (arm, cycle, the files its job writes that hold no timings)
BY_HAND = {
    "prepare": (None, None, ["images.npy", "index.csv", "classes.json"]),
    "prepare-masks": (None, None, ["masks.npy"]),
    "finetune": ("finetune", 0, ["model.safetensors", "model.json", "epochs.csv", "optimizer.safetensors"]),
    "evaluate": ("proxy", 2, []),
    "measure": ("proxy", 2, []),
    "find-misclassified": ("proxy", 2, ["predictions.csv", "selected.csv"]),
    "compute-cams": ("proxy", 2, ["cams.npz"]),
    "mask-and-save": ("duplicate", 2, ["erased.npz", "erased.csv"]),
    "retrain": ("proxy", 2, ["model.safetensors", "model.json", "epochs.csv", "optimizer.safetensors"]),
    "faithfulness": ("proxy", 2, ["faithfulness.npz"]),  # its .json holds the job's seconds
}
TIMED = {"epochs.csv": ["seconds", "images_per_s"]}


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(BY_HAND))
def test_every_stage_rerun_by_hand_writes_what_the_workflow_wrote(tiny_run, stage):
    """`proxyattention STAGE ...` runs the rule's own job: its outputs equal the workflow's byte for byte."""
    arm, cycle, names = BY_HAND[stage]
    if stage in ("prepare", "prepare-masks"):
        folder, args = tiny_run / "results" / "prepared" / "fm", ["--dataset", "fm"]
    else:
        folder = run_dir(tiny_run, arm, 1, cycle)
        args = ["--dataset", "fm", "--model", "lite0", "--seed", "1", "--arm", arm, "--cycle", str(cycle)]
    written = {"evaluate": "metrics.json", "measure": "measures.json"}.get(stage)
    if written:
        before = json.loads((folder / written).read_text())
    saved = {name: (folder / name).read_bytes() for name in names}
    # its wall-clock outputs and its log are new: put back afterwards, or every later test's run reruns
    # the cells after it (and reads the by-hand job's log as the workflow's)
    with kept_as_was(folder, tiny_run / "results" / "logs"):
        for name in names:
            (folder / name).unlink()
        proc = by_hand(tiny_run, stage, *args)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        for name in names:
            if name in TIMED:  # wall-clock columns can never repeat; every other cell must, to the byte
                again = pd.read_csv(folder / name, dtype=str)
                first = pd.read_csv(io.BytesIO(saved[name]), dtype=str)
                pd.testing.assert_frame_equal(again.drop(columns=TIMED[name]), first.drop(columns=TIMED[name]))
            else:
                assert (folder / name).read_bytes() == saved[name], name
        if written:
            after = json.loads((folder / written).read_text())
            assert {k: v for k, v in after.items() if "seconds" not in k} == \
                {k: v for k, v in before.items() if "seconds" not in k}


@pytest.mark.slow
def test_a_deleted_intermediate_is_made_again_by_naming_it_and_forcerun_reruns_everything_after(tiny_run):
    """#41.3, README "When something goes wrong": with a cams.npz deleted a plain run has nothing to
    do (its products are there); naming it plans its one job; `--forcerun compute_cams` plans every
    CAM job and everything made from them, but no preparation, finetune or baseline job."""
    snakemake(tiny_run)  # a finished run: the by-hand tests before may have left jobs to do
    import shutil

    cams = run_dir(tiny_run, "proxy", 1, 2) / "cams.npz"  # cycle 2: its own job (cycle 1 may share one)
    kept = tiny_run / "cams.kept.npz"
    shutil.copy2(cams, kept)  # put back as it was (content and time), so the run stays finished
    cams.unlink()
    try:
        assert "Nothing to be done" in snakemake(tiny_run, "-n").stdout + snakemake(tiny_run, "-n").stderr
        named = job_counts(snakemake(tiny_run, "-n", str(cams.relative_to(tiny_run))))
        assert named == {"compute_cams": 1, "total": 1}, named
    finally:
        shutil.copy2(kept, cams)
        kept.unlink()
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    seeds, cycles = len(config["seeds"]), config["cycles"]
    adding = [a for a in config["arms"] if a != "baseline"]
    forced = job_counts(snakemake(tiny_run, "-n", "--forcerun", "compute_cams"))
    assert forced["compute_cams"] == seeds * (1 + len(adding) * (cycles - 1))  # cycle 1's job is shared
    assert forced["retrain"] == forced["mask_and_save"] == seeds * len(adding) * cycles
    assert forced["evaluate"] == forced["measure"] == seeds * len(adding) * cycles
    assert not {"prepare", "finetune"} & set(forced)


@pytest.mark.slow
def test_a_stage_job_stopped_after_its_outputs_leaves_no_blank_cost(tiny_run):
    """#41.4: after Ctrl-C a CAM job's outputs were complete but its log had no stage time, the
    rerun never repeated it, and three arms' costs went blank. The tables now fill a missing stage
    time from the job's benchmark, else from its log's first and last timestamps, and say so in
    cost_note; nothing reruns for it."""
    snakemake(tiny_run)  # a finished run: the by-hand tests before may have left jobs to do
    import shutil

    log = tiny_run / "results" / "logs" / "compute_cams" / "fm" / "lite0" / "seed1" / "proxy" / "cycle2.log"
    bench = tiny_run / "results" / "benchmarks" / "compute_cams" / "fm" / "lite0" / "seed1" / "proxy" / "cycle2.tsv"
    kept = {p: tiny_run / f"kept.{p.name}" for p in (log, bench)}
    for path, copy in kept.items():
        shutil.copy2(path, copy)
    results = tiny_run / "results"
    # the tables as they were afterwards: a finished run for the next test
    with kept_as_was(*(results / name for name in ("summary.csv", "tables", "provenance.json", "provenance.html"))):
        log.write_text("".join(line for line in log.read_text().splitlines(keepends=True) if " took " not in line))
        bench.unlink()  # as if Snakemake was stopped before it wrote one
        try:
            assert job_counts(snakemake(tiny_run, "-n")) == {}  # nothing reruns for a cost
            snakemake(tiny_run, "--forcerun", "aggregate", "--allowed-rules", "aggregate")
            summary = pd.read_csv(results / "summary.csv", keep_default_na=False, na_values=[""])
            row = summary[(summary.arm == "proxy") & (summary.seed == 1) & (summary.cycle == 2)].iloc[0]
            assert row.proxy_seconds > 0 and "first to the last timestamp" in row.cost_note
            assert summary.proxy_seconds.notna().all() and summary.cumulative_seconds.notna().all()
        finally:
            for path, copy in kept.items():
                shutil.copy2(copy, path)
                copy.unlink()
    assert job_counts(snakemake(tiny_run, "-n")) == {}


@pytest.mark.slow
def test_an_evaluation_setting_added_to_a_finished_run_plans_only_the_measures(tiny_run):
    """#41.1: adding `evaluation: {occlusion_sample: ...}` to a finished run reran every retrain, CAM
    and mask job (the evaluation that held the measure fed the stop rule, and so every cycle). Now
    it plans the measure jobs and the tables and figures that read them, nothing else; a setting of
    the maps and the masks likewise."""
    snakemake(tiny_run)  # a finished run: the by-hand tests before may have left jobs to do
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    n_cells = len(config["seeds"]) * (1 + len(config["arms"]) * config["cycles"])
    for name, section in [("occlusion.yaml", {"evaluation": {"occlusion_sample": 7}}),
                          ("maps.yaml", {"evaluation": {"map_sample": 5}})]:
        edited = {**config, **{k: {**config.get(k, {}), **v} for k, v in section.items()}}
        (tiny_run / name).write_text(yaml.safe_dump(edited, sort_keys=False))
        counts = job_counts(subprocess.run(SNAKEMAKE + ["-n", "--directory", str(tiny_run), "--configfile",
                                                        str(tiny_run / name)], capture_output=True, text=True))
        assert counts == {"measure": n_cells, "aggregate": 1, "figures": 1, "all": 1, "total": n_cells + 3}, counts


def planned(workdir) -> str:
    """The jobs a dry run would run now (its job table), with every output counted as large: at a
    real size Snakemake (9.18 on) compares only files under 1 MB by checksum, larger ones by time."""
    out = snakemake(workdir, "-n", "--quiet", "rules", "--max-checksum-file-size", "1B").stdout
    return "\n".join(sorted(line for line in out.splitlines() if re.fullmatch(r"\w+\s+\d+", line.strip())))


@pytest.mark.slow
def test_a_by_hand_rerun_that_writes_the_same_bytes_replans_nothing(tiny_run):
    """#41: Snakemake deletes a job's outputs before running it, so a by-hand rerun used to leave
    new files (new modification times) and the next run replanned everything after them. Outputs
    that come out byte for byte as before get their old files back (the erased/ folder too)."""
    folder = run_dir(tiny_run, "proxy", 0, 1)
    names = ("erased", "erased.npz", "erased.csv")
    before = planned(tiny_run)
    stamps = {name: (folder / name).stat().st_mtime_ns for name in names}
    proc = by_hand(tiny_run, "mask-and-save", "--dataset", "fm", "--model", "lite0", "--seed", "0",
                   "--arm", "proxy", "--cycle", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 output(s) came out byte for byte as before" in proc.stderr
    assert {name: (folder / name).stat().st_mtime_ns for name in names} == stamps
    assert planned(tiny_run) == before
    assert not list(folder.glob(".byhand-*"))  # nothing left behind


@pytest.mark.slow
def test_by_hand_refuses_what_the_workflow_would_never_run(tiny_run):
    cell = ["--seed", "0", "--arm", "proxy", "--cycle", "1"]
    cases = [
        (["retrain", "--dataset", "fm", "--model", "efnet", *cell], "--model efnet is not in the config's models"),
        (["retrain", "--dataset", "fmm", "--model", "lite0", *cell], "--dataset fmm is not in the config's datasets"),
        (["compute-cams", "--dataset", "fm", "--model", "lite0", "--arm", "proxy", "--cycle", "0"], "cycles 1 to 2"),
        (["compute-cams", "--dataset", "fm", "--model", "lite0", "--arm", "baseline", "--cycle", "1"], "adds no images"),
        (["retrain", "--dataset", "fm", "--model", "lite0", "--seed", "0", "--arm", "random_erase", "--cycle", "1"],
         "--arm random_erase is not in the config's arms"),
    ]
    for argv, words in cases:
        proc = by_hand(tiny_run, argv[0], *argv[1:])
        assert proc.returncode == 2 and words in proc.stderr, (argv, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line, no traceback
    selected = run_dir(tiny_run, "proxy", 0, 1) / "selected.csv"
    with kept_as_was(selected):
        selected.unlink()
        proc = by_hand(tiny_run, "compute-cams", "--dataset", "fm", "--model", "lite0", *cell)
        assert proc.returncode == 2 and "made by find-misclassified" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_by_hand_keeps_a_cycle_the_stop_rule_skipped(stopped_run):
    """After the stop rule held, a by-hand retrain of that cycle trains nothing, as the workflow did."""
    run = run_dir(stopped_run, "proxy", 0, 2)
    saved = (run / "model.safetensors").read_bytes()
    with kept_as_was(run):
        (run / "model.safetensors").unlink()
        proc = by_hand(stopped_run, "retrain", "--dataset", "fm", "--model", "lite0", "--seed", "0", "--arm",
                       "proxy", "--cycle", "2")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (run / "model.safetensors").read_bytes() == saved
        assert json.loads((run / "train_stats.json").read_text())["skipped"] is True


@pytest.mark.slow
def test_the_proxy_arm_s_maps_are_scored_for_faithfulness_and_its_sample_reruns_only_that(tiny_run):
    """#36: every proxy-kind arm's cycle has ROAD for its own, moved and randomised-model maps in
    summary.csv, a verdict row and a sentence in the answer; the per-image values are the library's
    on the same images and maps; changing the sample plans only those jobs, aggregate and figures."""
    from proxyattention.analysis import faithfulness as fa
    from proxyattention.files.atomic import read_json

    summary = pd.read_csv(tiny_run / "results" / "summary.csv")
    proxy = summary[(summary.arm == "proxy") & (summary.cycle > 0)]
    others = summary[(summary.arm != "proxy") | (summary.cycle == 0)]
    assert len(proxy) == 4 and proxy.road_combined_own.notna().all() and proxy.road_morf_moved_p50.notna().all()
    assert others.road_combined_own.isna().all()
    assert (proxy.n_faithfulness == np.minimum(32, proxy.n_selected - proxy.n_faithfulness_constant)).all()
    folder = run_dir(tiny_run, "proxy", 0, 1)
    measured = read_json(folder / "faithfulness.json")
    assert measured["randomised_modules"] == ["classifier", "conv_head", "bn2", "blocks.6"]
    with np.load(folder / "faithfulness.npz") as per_image:
        assert per_image["own_morf"].shape == (measured["n_sample"], 9)
        assert np.isclose(per_image["own_combined"].mean(), measured["road_combined_own"])
        assert not per_image["offset_from_control"].any()  # no random_erase arm here: drawn offsets
        # the direct check: the arm's own added images were scored with the same model
        assert np.isfinite(per_image["p_true_own_fill"]).any()
    verdicts = pd.read_csv(tiny_run / "results" / "tables" / "fm_verdicts.csv")
    rows = verdicts[verdicts.metric == "road_combined"]
    assert set(rows.comparison) == {"proxy maps - moved maps", "proxy maps - randomised model's maps"}
    assert len(rows) == 4 and (rows.n_pairs == 2).all()
    assert "Were proxy's maps faithful (cycle 1)?" in (tiny_run / "results" / "tables" / "fm_answer.md").read_text()
    assert (tiny_run / "results" / "figures" / "faithfulness.png").stat().st_size > 10_000
    snakemake(tiny_run)  # up to date whatever earlier tests left
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    original = (tiny_run / "config.yaml").read_text()
    config["faithfulness"] = {"sample": 16}
    (tiny_run / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        plan = snakemake(tiny_run, "-n")
        counts = job_counts(plan)
        assert counts == {"faithfulness": 4, "aggregate": 1, "figures": 1, "all": 1, "total": 7}, plan.stdout[-3000:]
    finally:
        (tiny_run / "config.yaml").write_text(original)
    assert fa.KINDS == ("own", "moved", "random_model")
