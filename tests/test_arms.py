"""Named arms: variants of Proxy Attention compared in one DAG, sharing the work that does not differ."""

import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, NAMED_ARMS, make_config, run_dir, user_command

from proxyattention.settings.arms import comparisons, normalise, proxy_settings, unmatched_pairs
from proxyattention.settings.schema import ConfigError
from proxyattention.settings.stage_settings import owner, stage_settings
from proxyattention.settings.validate import check_config, validate
from proxyattention.stages.find_misclassified import find_misclassified


def test_the_list_form_means_what_it_meant():
    assert normalise(["baseline", "duplicate", "proxy", "random_erase"]) == {
        "baseline": {"kind": "baseline"}, "duplicate": {"kind": "duplicate", "matches": "proxy"},
        "proxy": {"kind": "proxy"}, "random_erase": {"kind": "random_erase", "matches": "proxy"}}
    config = make_config(arms=["baseline", "proxy", "random_erase"])
    assert comparisons(config) == [("proxy", "baseline"), ("random_erase", "baseline"), ("proxy", "random_erase")]


def test_arms_override_proxy_keys_and_controls_take_their_match():
    config = make_config(arms=NAMED_ARMS, proxy={"threshold": {"mode": "quantile", "value": 0.8}})
    pred = proxy_settings(config, "gradcampp_pred")
    assert pred["cam_method"] == "gradcam++" and pred["target"] == "prediction"
    assert pred["fill"] == {"mode": "blend", "blend_lambda": 0.4}
    assert pred["threshold"] == {"mode": "quantile", "value": 0.8}  # from the proxy section
    assert proxy_settings(config, "gradcam_random") == proxy_settings(config, "gradcam")
    pairs = comparisons(config)
    assert [p for p in pairs if p[1] == "baseline"] == [(a, "baseline") for a in NAMED_ARMS if a != "baseline"]
    assert ("gradcam", "gradcam_random") in pairs and ("eigencam", "gradcam_random") not in pairs
    # #42.1: the duplicate arm matches none; it adds gradcam's images (same selection, CAM and threshold), not
    # eigencam's or gradcampp_pred's (another CAM: other maps are empty, so other images join): not judged there
    assert ("gradcam", "duplicate") in pairs
    assert ("eigencam", "duplicate") not in pairs and ("gradcampp_pred", "duplicate") not in pairs
    assert unmatched_pairs(config) == [("eigencam", "duplicate"), ("gradcampp_pred", "duplicate")]


def test_a_control_is_judged_only_against_the_arm_whose_images_it_adds():
    """#42.1: a low-confidence arm (max_count 50) was judged "lowconf minus duplicate" against a
    duplicate arm that added every misclassified image (214 against 50). A control that matches
    none is compared with a proxy arm only when it selects and explains as that arm does; the
    other pairs are listed, not judged, unless report.comparisons asks for one by name; and the
    answer names them."""
    from proxyattention.analysis.verdicts import answers

    arms = {"baseline": {"kind": "baseline"}, "duplicate": {"kind": "duplicate"}, "proxy": {"kind": "proxy"},
            "lowconf": {"kind": "proxy", "selection": {"rule": "both", "confidence_below": 0.6, "max_count": 50}},
            "black_random": {"kind": "random_erase", "fill": {"mode": "mean"}}}
    config = make_config(arms=arms)
    pairs = comparisons(config)
    assert ("proxy", "duplicate") in pairs and ("proxy", "black_random") in pairs  # its fill is its own
    assert ("lowconf", "duplicate") not in pairs and ("lowconf", "black_random") not in pairs
    assert unmatched_pairs(config) == [("lowconf", "duplicate"), ("lowconf", "black_random")]
    asked = make_config(arms=arms, report={"comparisons": [["lowconf", "duplicate"]]})
    assert ("lowconf", "duplicate") in comparisons(asked) and unmatched_pairs(asked) == [("lowconf", "black_random")]
    text = answers(pd.DataFrame(columns=["dataset", "model", "arm", "metric"]), ["proxy", "lowconf"],
                   unmatched_pairs(config))
    assert "Not judged: lowconf minus duplicate, lowconf minus black_random." in text


def test_cycle_one_work_is_shared_by_arms_with_equal_settings():
    config = make_config(arms=NAMED_ARMS)
    adding = ["duplicate", "gradcam", "eigencam", "gradcampp_pred", "gradcam_random"]
    assert {owner(config, "fm", "lite0", a, 1, "find_misclassified") for a in adding} == {"gradcam"}
    cams = {a: owner(config, "fm", "lite0", a, 1, "compute_cams") for a in adding}
    assert cams == {"duplicate": "gradcam", "gradcam": "gradcam", "eigencam": "eigencam",
                    "gradcampp_pred": "gradcampp_pred", "gradcam_random": "gradcam"}
    assert all(owner(config, "fm", "lite0", a, 2, "compute_cams") == a for a in adding)  # own models from cycle 2


@pytest.mark.parametrize("arms, words", [
    ({"a": {"kind": "proxi"}}, "arms.a.kind"),
    ({"a": {"kind": "proxy", "threshhold": {"value": 0.8}}}, "arms.a: unknown key(s) threshhold"),
    ({"p": {"kind": "proxy"}, "r": {"kind": "random_erase", "matches": "baseline"}, "baseline": {"kind": "baseline"}},
     "arms.r.matches: 'baseline' is not a proxy arm"),
    ({"p": {"kind": "proxy", "cam_method": "gradcam3"}}, "arms.p"),
    ({"p": {"kind": "proxy", "fill": {"mode": "pink"}}}, "arms.p: setting 'fill.mode'"),
    ({"b": {"kind": "baseline", "cam_method": "eigencam"}}, "arms.b: a baseline arm"),
])
def test_a_wrong_arm_is_refused_naming_it(arms, words):
    config = make_config(arms=arms)
    with pytest.raises(ConfigError) as err:
        check_config(config)
    assert words in str(err.value)


def planned_jobs(text: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job in a dry-run's output."""
    jobs, rule = [], None
    for line in text.splitlines():
        line = line.strip()  # the jobs of a group job (cluster.group) are printed indented
        if line.startswith("rule ") or line.startswith("localrule "):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("wildcards:") and rule:
            jobs.append((rule, dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))))
            rule = None
    return jobs


def test_the_variants_config_shares_cycle_one_work(tmp_path):
    """`snakemake -n --configfile config.variants.yaml` (the repo's own file, in a fresh folder):
    one cycle-1 find_misclassified per (dataset, model, seed), one cycle-1 compute_cams per
    distinct CAM setting (gradcam shared by duplicate and gradcam_random, eigencam, gradcam++)."""
    for entry in ROOT.iterdir():
        if entry.name not in {".git", ".venv", ".venv-readme", "results", ".snakemake"}:
            (tmp_path / entry.name).symlink_to(entry)
    proc = subprocess.run(user_command("snakemake", "--cores", "all", "-n", "--configfile", "config.variants.yaml"),
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = yaml.safe_load((ROOT / "config.variants.yaml").read_text())
    runs = len(config["datasets"]) * len(config["models"]) * len(config["seeds"])
    jobs = planned_jobs(proc.stdout)

    def count(rule, cycle):
        return sorted(w["arm"] for r, w in jobs if r == rule and w["cycle"] == str(cycle))

    assert count("find_misclassified", 1) == ["gradcam"] * runs
    assert count("compute_cams", 1) == sorted(["gradcam", "eigencam", "gradcampp_pred"] * runs)
    adding = [a for a, s in config["arms"].items() if s["kind"] != "baseline"]
    assert count("compute_cams", 2) == sorted(adding * runs)  # each arm's own model from cycle 2 on
    assert count("mask_and_save", 1) == sorted(adding * runs)  # what it adds is each arm's own
    assert count("retrain", 1) == sorted(list(config["arms"]) * runs)


@pytest.mark.slow
def test_a_tiny_six_arm_run_compares_every_pair(six_arm_run, tiny_run, tmp_path):
    run = six_arm_run
    summary = pd.read_csv(run / "results" / "summary.csv")
    later = summary[summary.cycle > 0]
    assert sorted(later.arm.unique()) == sorted(NAMED_ARMS) and len(later) == len(NAMED_ARMS)
    table = pd.read_csv(run / "results" / "tables" / "fm_comparison.csv")
    config = validate(yaml.safe_load((run / "config.yaml").read_text()))
    for arm, other in comparisons(config):
        assert table[f"{arm}_minus_{other}_pairs"].iloc[0] == 1, (arm, other)
    # the positive control is judged against baseline only, and the answer says what it is
    assert [p for p in comparisons(config) if "erasing" in p] == [("erasing", "baseline")]
    answer = (run / "results" / "tables" / "fm_answer.md").read_text()
    assert "erasing minus baseline (the positive control: can erasing move accuracy here?)" in answer
    erasing_log = (run / "results" / "logs" / "retrain" / "fm" / "lite0" / "seed0" / "erasing" / "cycle1.log")
    assert erasing_log.exists()
    # the shared selection is what the duplicate arm's own job would have selected
    shared = run_dir(run, "gradcam", 0, 1)
    prepared = run / "results" / "prepared" / "fm"
    finetune = run_dir(run, "finetune", 0, 0)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the rule's job (threads: 1): other kernels round the last digits otherwise
    try:
        find_misclassified(stage_settings(config, "fm", "lite0", 1, "find_misclassified", "duplicate"),
                           prepared / "images.npy", prepared / "index.csv", finetune / "model.safetensors",
                           finetune / "model.json", tmp_path / "predictions.csv", tmp_path / "selected.csv")
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "selected.csv").read_bytes() == (shared / "selected.csv").read_bytes()
    assert not (run_dir(run, "duplicate", 0, 1) / "selected.csv").exists()  # not computed twice
    # duplicate adds exactly what gradcam adds (same maps, same empty ones), unchanged
    dup, grad = (np.load(run_dir(run, a, 0, 1) / "erased.npz") for a in ("duplicate", "gradcam"))
    np.testing.assert_array_equal(dup["index"], grad["index"])
    for arm in ("gradcam", "eigencam", "gradcampp_pred"):
        assert (run / "results" / "figures" / "examples" / "fm" / "lite0" / f"{arm}.png").exists()
    # the list form (tiny_run: [baseline, duplicate, proxy]) gives the same finetune and the same
    # images added in cycle 1 as the arms of the mapping form that mean the same thing, to the byte
    # (the runs are equally long, so their finetunes train the same slice of the one schedule;
    # cycle 1 itself trains 2 epochs there and 1 here)
    import hashlib

    def digest(path, named="", listed=""):  # png paths name the arm
        return hashlib.sha1(path.read_bytes().replace(f"/{named}/".encode(), f"/{listed}/".encode())).hexdigest()

    for seed in (0,):
        for name in ("model.safetensors", "optimizer.safetensors"):
            assert digest(run_dir(run, "finetune", seed, 0) / name) == digest(run_dir(tiny_run, "finetune", seed, 0) / name)
        for named, listed in (("duplicate", "duplicate"), ("gradcam", "proxy")):
            ours, theirs = run_dir(run, named, seed, 1), run_dir(tiny_run, listed, seed, 1)
            for name in ("erased.npz", "erased.csv"):
                assert digest(ours / name, named, listed) == digest(theirs / name), (named, seed, name)


def test_by_hand_points_a_shared_job_to_the_arm_that_runs_it():
    from proxyattention.cli import UsageError, check_cell, parse_args

    config = make_config(arms=NAMED_ARMS, seeds=[0])
    args = parse_args(["find-misclassified", "--dataset", "fm", "--model", "lite0", "--arm", "duplicate", "--cycle", "1"])
    with pytest.raises(UsageError, match="uses the find-misclassified job of the gradcam arm"):
        check_cell(config, args)
    check_cell(config, parse_args(["compute-cams", "--dataset", "fm", "--model", "lite0", "--arm", "eigencam",
                                   "--cycle", "1"]))  # its own CAM job
    check_cell(config, parse_args(["find-misclassified", "--dataset", "fm", "--model", "lite0", "--arm", "duplicate",
                                   "--cycle", "2"]))  # its own model from cycle 2 on
