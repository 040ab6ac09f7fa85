"""Verdicts, time to target and example choice on hand-made summaries, against scipy's paired t-test."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from proxyattention.aggregate import NO_EVIDENCE, verdicts
from proxyattention.figures import example_order, reach_target


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

    proc = subprocess.run([sys.executable, "-m", "proxyattention.figures", "docs/study/summary.csv", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "fashion_mnist_verdicts.csv").read_text() == \
        (ROOT / "docs" / "study" / "tables" / "fashion_mnist_verdicts.csv").read_text()
    assert all((tmp_path / f"{name}.png").stat().st_size > 10_000 for name in ("paired_differences", "time_to_target"))
    assert "python -m proxyattention.figures docs/study/summary.csv" in (ROOT / "docs" / "study.md").read_text()


def test_equal_differences_from_three_seeds_give_no_verdict():
    """#22.2: accuracy moves in steps of 1/n, so three seeds can differ by exactly the same
    amount; a zero spread gives a zero-width interval, which is no evidence of anything."""
    from proxyattention.aggregate import mean_ci, verdict

    mean, low, high, n = mean_ci([0.0005] * 3)
    assert n == 3 and mean == pytest.approx(0.0005)
    assert verdict(low, high, n) == NO_EVIDENCE
    frame = summary({"baseline": {1: [0.5, 0.6, 0.7]}, "proxy": {1: [0.5005, 0.6005, 0.7005]}})
    assert verdicts(frame, "d", [("proxy", "baseline")]).verdict.tolist() == [NO_EVIDENCE]
