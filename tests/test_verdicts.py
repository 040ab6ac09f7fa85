"""Verdicts, time to target and example choice on hand-made summaries, against scipy's paired t-test."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from proxyattention.analysis.verdicts import NO_EVIDENCE, verdicts
from proxyattention.stages.figures import example_order, reach_target


def summary(accuracies: dict, seconds: float = 10.0) -> pd.DataFrame:
    """Rows of a summary: accuracies[arm][cycle] is a list over seeds; cycle 0 is the finetune."""
    rows = []
    for arm, by_cycle in accuracies.items():
        for cycle, per_seed in by_cycle.items():
            for seed, acc in enumerate(per_seed):
                rows.append({"dataset": "d", "model": "m", "arm": arm, "seed": seed, "cycle": cycle,
                             "accuracy": acc, "cumulative_train_seconds": seconds * (cycle + 1) + seed,
                             "cumulative_images_seen": 100 * (cycle + 1)})
    return pd.DataFrame(rows)


def test_verdicts_match_scipys_paired_t_interval_and_say_no_more_than_it_shows():
    base = [0.60, 0.62, 0.61, 0.63, 0.59]
    frame = summary({"finetune": {0: [0.5] * 5}, "baseline": {1: base},
                     "proxy": {1: [b + d for b, d in zip(base, [0.02, 0.03, 0.01, 0.025, 0.015])]},
                     "duplicate": {1: [b + d for b, d in zip(base, [-0.02, -0.03, -0.01, -0.025, -0.02])]},
                     "random_erase": {1: [b + d for b, d in zip(base, [0.02, -0.03, 0.01, -0.01, 0.0])]}})
    table = verdicts(frame, "d", [("proxy", "baseline"), ("duplicate", "baseline"), ("random_erase", "baseline")])
    words = dict(zip(table.comparison, table.verdict))
    assert words == {"proxy - baseline": "better", "duplicate - baseline": "worse",
                     "random_erase - baseline": NO_EVIDENCE}
    for arm in ("proxy", "duplicate", "random_erase"):
        row = table.set_index("arm").loc[arm]
        a = frame[(frame.arm == arm)].sort_values("seed").accuracy.values
        b = frame[(frame.arm == "baseline")].sort_values("seed").accuracy.values
        ci = stats.ttest_rel(a, b).confidence_interval(0.95)
        np.testing.assert_allclose([row.mean_difference, row.ci_low, row.ci_high], [np.mean(a - b), ci.low, ci.high])
        assert row.n_pairs == 5


@pytest.mark.parametrize("diffs", [[0.01, 0.01], [0.2]])
def test_two_seeds_or_fewer_never_give_a_verdict(diffs):
    """Two equal differences give a zero-width interval; one gives none: no evidence either way."""
    frame = summary({"baseline": {1: [0.5] * len(diffs)}, "proxy": {1: [0.5 + d for d in diffs]}})
    table = verdicts(frame, "d", [("proxy", "baseline")])
    assert table.verdict.tolist() == [NO_EVIDENCE] and table.n_pairs.tolist() == [len(diffs)]


def test_time_to_target_counts_seeds_that_never_reach_it():
    frame = summary({"finetune": {0: [0.5, 0.5]}, "baseline": {1: [0.6, 0.55], 2: [0.7, 0.58]},
                     "proxy": {1: [0.72, 0.71], 2: [0.75, 0.74]}})
    reach = reach_target(frame, target_accuracy=0.7).set_index(["arm", "seed"])
    assert reach.loc[("proxy", 0)].cycle == 1 and reach.loc[("proxy", 1)].cycle == 1
    assert reach.loc[("baseline", 0)].cycle == 2 and reach.loc[("baseline", 0)].seconds == 30.0
    assert not reach.loc[("baseline", 1)].reached and np.isnan(reach.loc[("baseline", 1)].seconds)
    # without a stop-rule target: the highest mean accuracy every arm reached (baseline's 0.64)
    assert reach_target(frame).target.unique().tolist() == [pytest.approx(0.64)]


def test_examples_spread_over_confusions_and_show_erased_images_first():
    selected = pd.DataFrame({"index": [10, 11, 12, 13, 14, 15], "label": [0, 0, 0, 1, 2, 0],
                             "prediction": [1, 1, 1, 2, 0, 1]})
    order = example_order(selected, added={10, 12, 13, 15})
    shown = [int(selected.loc[p, "index"]) for p in order]
    assert shown[:3] == [10, 13, 12]  # one of each confusion with an erased image, the most frequent first
    assert shown[3:] == [15, 14, 11]  # then empty maps, still spread: 14 (another confusion) before 11


def test_the_committed_study_redraws_from_its_summary(tmp_path):
    """docs/study.md's figures and verdicts come back from docs/study/summary.csv alone, with the
    command the page gives, and the redrawn verdict table equals the committed one."""
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run([sys.executable, "-m", "proxyattention.stages.figures", "docs/study/summary.csv", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("fashion_mnist_verdicts.csv", "fashion_mnist_answer.md"):
        assert (tmp_path / name).read_text() == (ROOT / "docs" / "study" / "tables" / name).read_text(), name
    assert all((tmp_path / f"{name}.png").stat().st_size > 10_000 for name in ("paired_differences", "time_to_target"))
    assert "python -m proxyattention.stages.figures docs/study/summary.csv" in (ROOT / "docs" / "study.md").read_text()


def test_equal_differences_from_three_seeds_give_no_verdict():
    """#22.2: accuracy moves in steps of 1/n, so three seeds can differ by exactly the same
    amount; a zero spread gives a zero-width interval, which is no evidence of anything."""
    from proxyattention.analysis.power import mean_ci
    from proxyattention.analysis.verdicts import verdict

    mean, low, high, n = mean_ci([0.0005] * 3)
    assert n == 3 and mean == pytest.approx(0.0005)
    assert verdict(low, high, n) == NO_EVIDENCE
    frame = summary({"baseline": {1: [0.5, 0.6, 0.7]}, "proxy": {1: [0.5005, 0.6005, 0.7005]}})
    assert verdicts(frame, "d", [("proxy", "baseline")]).verdict.tolist() == [NO_EVIDENCE]


def test_figures_redraw_a_summary_whose_seeds_all_score_the_same(tmp_path):
    """#22.9: a model stuck at chance (0.1 on every seed) made the mean a rounding error above
    the minimum and matplotlib refused the negative whisker; every figure is written now."""
    import subprocess
    import sys

    from conftest import ROOT

    frame = pd.read_csv(ROOT / "docs" / "study" / "summary.csv")
    frame.loc[frame.arm == "proxy", "accuracy"] = 0.1  # mean of six 0.1s is 0.10000000000000002
    frame.to_csv(tmp_path / "summary.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "proxyattention.stages.figures", str(tmp_path / "summary.csv"),
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("accuracy_by_cycle", "accuracy_by_time", "paired_differences", "accuracy_cost", "peak_memory",
                 "time_to_target"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 10_000


def named_arms_summary(test: bool = False) -> pd.DataFrame:
    """Three seeds of named arms (a proxy arm, its random control, baseline), one cycle."""
    frame = summary({"finetune": {0: [0.5, 0.5, 0.5]}, "baseline": {1: [0.60, 0.62, 0.61]},
                     "gradcam": {1: [0.64, 0.65, 0.66]}, "gradcam_random": {1: [0.61, 0.60, 0.63]}})
    kinds = {"finetune": ("finetune", ""), "baseline": ("baseline", ""), "gradcam": ("proxy", ""),
             "gradcam_random": ("random_erase", "gradcam")}
    frame["kind"] = frame.arm.map(lambda a: kinds[a][0])
    frame["matches"] = frame.arm.map(lambda a: kinds[a][1])
    frame["stop_reason"] = ""
    frame["peak_memory_mib"], frame["peak_memory_kind"] = 100.0, "cpu"
    if test:
        frame["test_accuracy"] = frame.accuracy - 0.1
    return frame


def test_redraw_compares_the_arms_the_summary_holds_with_the_split_it_used(tmp_path):
    """#22.8: redraw took the default arms' comparisons whatever the summary held, and dropped
    the stop-rule caveat; it now reads the arms' kinds from the summary and the stop rule from
    provenance.json beside it, and draws every figure on the verdicts' split."""
    import json

    from proxyattention.stages.figures import reach_target, redraw

    named_arms_summary().to_csv(tmp_path / "summary.csv", index=False)
    (tmp_path / "provenance.json").write_text(json.dumps({"stop_rule": True, "job_commits": ["abc"],
                                                          "config_digest": "f" * 64}))
    redraw(tmp_path / "summary.csv", tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "d_verdicts.csv")
    assert table.comparison.tolist() == ["gradcam - baseline", "gradcam_random - baseline",
                                         "gradcam - gradcam_random"]
    assert table.split.unique().tolist() == ["validation (the stop rule also chose on it)"]
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["redrawn_from"].endswith("summary.csv")
    tested = named_arms_summary(test=True)
    reach = reach_target(tested)
    assert reach.metric.unique().tolist() == ["test_accuracy"]
    assert reach.target.iloc[0] == pytest.approx(tested[tested.cycle == 1].groupby("arm").test_accuracy.mean().min())


def test_the_cost_of_an_adding_arm_includes_its_own_stages(tmp_path):
    """#22.5: cumulative_seconds adds the find, CAM and mask stages' own time (from their logs)
    to training; cumulative_train_seconds stays training alone; time to target uses the first."""
    import json

    from proxyattention.stages.aggregate import summarise
    from proxyattention.stages.figures import reach_target

    cells, paths = [], []
    for arm, cycle, seconds in (("finetune", 0, 10.0), ("baseline", 1, 5.0), ("proxy", 1, 6.0)):
        path = tmp_path / f"{arm}.json"
        path.write_text(json.dumps({"accuracy": 0.5 + cycle * 0.1, "train_seconds": seconds, "images_seen": 100,
                                    "wall_seconds": seconds}))
        cells.append(["d", "m", 0, arm, cycle])
        paths.append(path)
    logs = {}
    for stage, seconds in (("find_misclassified", 2.0), ("compute_cams", 3.0), ("mask_and_save", 0.5)):
        (tmp_path / f"{stage}.log").write_text(f"stage {stage} took 99.000 s\n(a rerun)\nstage {stage} took {seconds:.3f} s\n")
        logs[stage] = tmp_path / f"{stage}.log"
    frame = summarise(cells, paths, stage_logs={("d", "m", 0, "proxy", 1): logs}).set_index("arm")
    assert frame.loc["proxy", "proxy_seconds"] == 5.5
    assert frame.loc["proxy", "cumulative_train_seconds"] == 16.0 and frame.loc["proxy", "cumulative_seconds"] == 21.5
    assert frame.loc["baseline", "cumulative_seconds"] == frame.loc["baseline", "cumulative_train_seconds"] == 15.0
    reach = reach_target(frame.reset_index(), target_accuracy=0.6).set_index("arm")
    assert reach.loc["proxy", "seconds"] == 21.5
    (tmp_path / "mask_and_save.log").write_text("killed before it finished\n")
    frame = summarise(cells, paths, stage_logs={("d", "m", 0, "proxy", 1): logs}).set_index("arm")
    assert np.isnan(frame.loc["proxy", "cumulative_seconds"])  # unknown, never a smaller number
    assert "mask_and_save unknown" in frame.loc["proxy", "cost_note"] and frame.loc["baseline", "cost_note"] == ""
    # #41.4: a log without its time (an interrupted attempt's) counts the job's Snakemake benchmark
    bench = tmp_path / "mask_and_save.tsv"
    bench.write_text("s\th:m:s\tmax_rss\n0.8123\t0:00:00\t90.1\n")
    frame = summarise(cells, paths, stage_logs={("d", "m", 0, "proxy", 1): logs},
                      stage_benchmarks={("d", "m", 0, "proxy", 1): {"mask_and_save": bench}}).set_index("arm")
    assert frame.loc["proxy", "proxy_seconds"] == pytest.approx(5.0 + 0.8123)
    assert "mask_and_save: job wall time from" in frame.loc["proxy", "cost_note"]
    bench.unlink()  # no benchmark either: the span of the log's timestamps
    (tmp_path / "mask_and_save.log").write_text("2026-12-04 16:30:01,100 INFO x: start\n"
                                                 "2026-12-04 16:30:03,350 INFO x: 12 images written\n")
    frame = summarise(cells, paths, stage_logs={("d", "m", 0, "proxy", 1): logs},
                      stage_benchmarks={("d", "m", 0, "proxy", 1): {"mask_and_save": bench}}).set_index("arm")
    assert frame.loc["proxy", "proxy_seconds"] == pytest.approx(5.0 + 2.25)
    assert "first to the last timestamp" in frame.loc["proxy", "cost_note"]
    from proxyattention.stages.figures import cost_of

    blank = frame.reset_index()
    blank.loc[blank.arm == "proxy", "cumulative_seconds"] = np.nan
    column, label = cost_of(blank)
    assert column == "cumulative_seconds" and "cost unknown, not drawn: proxy" in label  # that arm only


@pytest.mark.parametrize("n", [2, 3, 5, 6, 8, 10, 20])
def test_the_minimum_detectable_effect_matches_statsmodels(n):
    """#24: the MDE (80% power, two-sided 5% paired t-test) from scipy's noncentral t equals
    statsmodels' TTestPower, computed independently, and the pairs needed are its ceiling."""
    from statsmodels.stats.power import TTestPower

    from proxyattention.analysis.power import mde, pairs_needed

    sd = 0.0123
    expected = TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8, alternative="two-sided") * sd
    assert mde(sd, n) == pytest.approx(expected, rel=1e-6)
    effect = 0.005
    needed = TTestPower().solve_power(effect_size=effect / sd, alpha=0.05, power=0.8, alternative="two-sided")
    assert pairs_needed(effect, sd) == np.ceil(needed)


def test_power_far_in_the_tail_is_integrated_not_nan():
    """scipy's nct is NaN at an extreme noncentrality (two pairs whose differences are equal up to
    float rounding made the demo's aggregate job fail); power then integrates over the chi-square
    and agrees with nct where both exist, and a spread of rounding error has no MDE."""
    from scipy import stats

    from proxyattention.analysis.power import power

    critical, nc = stats.t.ppf(0.975, 1), 0.42 * np.sqrt(2) / 1e-17
    assert np.isnan(stats.nct.sf(critical, 1, nc) + stats.nct.cdf(-critical, 1, nc))
    assert power(0.42, 1e-17, 2) == pytest.approx(1.0)
    from proxyattention.analysis.power import mde

    assert np.isnan(mde(1e-17, 2))  # equal differences up to rounding: no spread, no MDE
    import proxyattention.analysis.power as module

    real = stats.nct.sf
    try:
        stats.nct.sf = lambda *a, **k: np.nan  # force the integral
        integrated = [module.power(d, 0.01, n) for d in (0.005, 0.02) for n in (2, 4)]
    finally:
        stats.nct.sf = real
    assert integrated == pytest.approx([module.power(d, 0.01, n) for d in (0.005, 0.02) for n in (2, 4)], rel=1e-6)


def test_no_spread_leaves_the_mde_undefined_not_zero():
    from proxyattention.analysis.power import mde, pairs_needed

    assert np.isnan(mde(0.0, 6)) and np.isnan(mde(0.01, 1)) and np.isnan(pairs_needed(0.005, 0.0))
    frame = summary({"baseline": {1: [0.5, 0.6, 0.7]}, "proxy": {1: [0.51, 0.61, 0.71]}})
    row = verdicts(frame, "d", [("proxy", "baseline")]).iloc[0]
    assert np.isnan(row.mde) and np.isnan(row.pairs_needed) and row.verdict == row.verdict_holm == NO_EVIDENCE


def test_holm_adjusts_within_one_table_as_statsmodels_does():
    """#24: many named arms make many comparisons; verdict_holm uses Holm's step-down adjustment
    over the comparisons of one (dataset, model) table."""
    from statsmodels.stats.multitest import multipletests

    from proxyattention.analysis.power import holm

    p = [0.01, 0.04, 0.03, 0.005, float("nan"), 0.2]
    finite = [x for x in p if np.isfinite(x)]
    np.testing.assert_allclose([x for x in holm(p) if np.isfinite(x)], multipletests(finite, method="holm")[1])
    base = [0.60, 0.62, 0.61, 0.63, 0.59]
    frame = summary({"baseline": {1: base},
                     "proxy": {1: [b + d for b, d in zip(base, [0.02, 0.03, 0.01, 0.025, 0.015])]},
                     "duplicate": {1: [b + d for b, d in zip(base, [0.004, -0.001, 0.006, 0.0, 0.003])]}})
    table = verdicts(frame, "d", [("proxy", "baseline"), ("duplicate", "baseline")]).set_index("comparison")
    np.testing.assert_allclose(table.p_holm, multipletests(table.p_value, method="holm")[1])
    assert table.loc["proxy - baseline", "verdict_holm"] == "better"
    row = table.loc["proxy - baseline"]
    assert row.p_value == pytest.approx(stats.ttest_rel(frame[frame.arm == "proxy"].accuracy.values,
                                                        np.array(base)).pvalue)


def test_time_to_target_never_averages_only_the_seeds_that_arrived():
    """#24: a seed that never reached the target counts last; the bar is the censored median."""
    from proxyattention.stages.figures import censored_median

    seconds = pd.Series([10.0, 12.0, np.nan])
    assert censored_median(seconds, pd.Series([True, True, False])) == 12.0  # not the survivors' 11
    assert censored_median(pd.Series([10.0, np.nan, np.nan]), pd.Series([True, False, False])) == np.inf


def test_on_simulated_runs_the_t_interval_covers_the_truth():
    """#24: 400 simulated experiments of 5 seeds each on per-image outcomes with a known true
    difference: the t-interval covers it in 90-99% of them. The bootstrap's coverage is measured
    and reported (README), not asserted to be nominal."""
    from proxyattention.analysis.bootstrap import coverage

    result = coverage(5, experiments=400)
    assert 0.90 <= result["t_coverage"] <= 0.99, result
    assert 0.5 < result["bootstrap_coverage"] <= 1.0


def test_the_bootstrap_resamples_seeds_and_images_and_repeats():
    """The percentile interval of the paired bootstrap: seeded (the same interval twice), around
    the observed mean, wider with fewer images."""
    from proxyattention.analysis.bootstrap import outcome_shares, paired_bootstrap

    rng = np.random.default_rng(1)
    shares = []
    for _ in range(5):
        a, b = rng.random(400) < 0.7, rng.random(400) < 0.65
        shares.append(outcome_shares(a, b))
    shares = np.array(shares)
    mean = (shares[:, 0] - shares[:, 2]).mean()
    low, high = paired_bootstrap(shares, 400)
    assert (low, high) == paired_bootstrap(shares, 400) and low < mean < high
    narrow = high - low
    low, high = paired_bootstrap(shares, 40)
    assert high - low > narrow
    assert np.isnan(paired_bootstrap(shares[:1], 400)[0])


def test_example_order_is_the_quadratic_orders_in_one_pass_over_the_table():
    """#40: the examples' order groups the table once (it filtered it once per confusion pair: at a
    1,000-class dataset, pairs x selected); the same order as that reference."""
    def reference(selected, added):
        pairs = selected.groupby(["label", "prediction"]).size().sort_values(ascending=False, kind="stable")
        queues = []
        for (label, pred), _ in pairs.items():
            members = list(selected.index[(selected.label == label) & (selected.prediction == pred)])
            queues.append(sorted(members, key=lambda pos: int(selected.loc[pos, "index"]) not in added))
        order = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
        return sorted(order, key=lambda pos: int(selected.loc[pos, "index"]) not in added)

    rng = np.random.default_rng(0)
    selected = pd.DataFrame({"index": rng.permutation(5000)[:800], "label": rng.integers(0, 30, 800),
                             "prediction": rng.integers(0, 30, 800)})
    added = set(selected["index"].to_numpy()[rng.random(800) < 0.6].tolist())
    assert example_order(selected, added) == reference(selected, added)
    assert example_order(selected.iloc[0:0], set()) == []


def test_the_forest_plot_keeps_its_axis_on_the_differences_in_points_with_two_seeds(tmp_path):
    """#42.3: with two seeds the MDE is ~150 points; its ticks set the axis to ±1.5 (fractions) and
    squashed the differences. The axis now spans the differences, in points."""
    from proxyattention.stages.figures import paired_differences

    frame = summary({"finetune": {0: [0.5, 0.5]}, "baseline": {1: [0.60, 0.62]}, "proxy": {1: [0.61, 0.64]}})
    low, high = paired_differences(frame, [("proxy", "baseline")], tmp_path / "forest.png")
    assert low == -high and 2.0 < high < 3.0  # the largest difference is 2 points
    assert (tmp_path / "forest.png").stat().st_size > 10_000


def test_each_metrics_file_is_parsed_once_and_gives_provenance_its_versions(tmp_path, monkeypatch):
    """#40 (smaller): aggregate parsed every metrics.json (a K x K confusion matrix each) twice,
    once for the summary and once more for provenance's versions."""
    import json

    from pathlib import Path

    import proxyattention.stages.aggregate as aggregate

    cells, paths = [], []
    for arm, cycle in (("finetune", 0), ("baseline", 1), ("proxy", 1)):
        path = tmp_path / f"{arm}.json"
        path.write_text(json.dumps({"accuracy": 0.5, "train_seconds": 1.0, "images_seen": 10, "wall_seconds": 1.0,
                                    "confusion_matrix": [[1, 0], [0, 1]], "versions": {"commit": f"c-{arm}"}}))
        cells.append(["d", "m", 0, arm, cycle])
        paths.append(path)
    read = []
    real = aggregate.read_json
    monkeypatch.setattr(aggregate, "read_json", lambda p: read.append(Path(p).name) or real(p))
    versions = []
    aggregate.summarise(cells, paths, versions=versions)
    assert sorted(read) == ["baseline.json", "finetune.json", "proxy.json"]
    assert versions == [{"commit": "c-finetune"}, {"commit": "c-baseline"}, {"commit": "c-proxy"}]
