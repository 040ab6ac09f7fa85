"""Selection rules on hand-made predictions; metrics against scikit-learn; the stop rule."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from proxyattention.analysis.power import mean_ci
from proxyattention.stages.figures import with_shared_finetune
from proxyattention.stages.decide_cycle import decide
from proxyattention.stages.evaluate import classification_metrics
from proxyattention.stages.find_misclassified import prediction_table, select


def hand_made():
    # logits for 6 images, 3 classes
    logits = np.log(np.array([
        [0.8, 0.1, 0.1],   # label 0, right, sure
        [0.3, 0.6, 0.1],   # label 0, wrong
        [0.4, 0.35, 0.25], # label 0, right, unsure (p=0.4)
        [0.1, 0.1, 0.8],   # label 1, wrong, very
        [0.2, 0.7, 0.1],   # label 1, right
        [0.45, 0.1, 0.45], # label 2, argmax is class 0 (first of ties): wrong
    ]))
    index = pd.DataFrame({"index": np.arange(6), "source": [f"f{i}" for i in range(6)], "label": [0, 0, 0, 1, 1, 2]})
    return prediction_table(logits, index)


def test_prediction_table_values():
    table = hand_made()
    assert list(table.prediction) == [0, 1, 0, 2, 1, 0]
    assert table.true_probability.round(6).tolist() == [0.8, 0.3, 0.4, 0.1, 0.7, 0.45]
    np.testing.assert_allclose(table.loss, -np.log([0.8, 0.3, 0.4, 0.1, 0.7, 0.45]))


def test_misclassified_highest_loss_first():
    assert list(select(hand_made(), "misclassified")["index"]) == [3, 1, 5]


def test_low_confidence_includes_right_but_unsure():
    assert list(select(hand_made(), "low_confidence", confidence_below=0.5)["index"]) == [3, 1, 2, 5]


def test_both_and_caps():
    table = hand_made()
    assert list(select(table, "both", confidence_below=0.42)["index"]) == [3, 1, 2, 5]
    assert list(select(table, "misclassified", max_count=2)["index"]) == [3, 1]
    assert list(select(table, "misclassified", max_fraction=0.2)["index"]) == [3]  # ceil(0.2 * 3)


def test_hardest_keeps_the_highest_loss_share_of_the_training_images():
    """A model that fits its training set misclassifies none: `hardest` keeps the highest-loss
    images up to the cap, the misclassified first, then the least confident right ones."""
    table = hand_made()
    assert list(select(table, "hardest", max_fraction=0.5)["index"]) == [3, 1, 2]  # ceil(0.5 * 6)
    assert list(select(table, "hardest", max_count=5)["index"]) == [3, 1, 2, 5, 4]
    fitted = table.assign(prediction=table.label)  # every image right: misclassified selects nothing
    assert select(fitted, "misclassified").empty and len(select(fitted, "hardest", max_fraction=0.34)) == 3


def test_hardest_without_a_cap_is_refused_naming_the_arm():
    from conftest import make_config

    from proxyattention.settings.schema import ConfigError
    from proxyattention.settings.validate import check_config

    with pytest.raises(ConfigError, match=r"^proxy.selection.rule: hardest .* set max_fraction"):
        check_config(make_config(proxy={"selection": {"rule": "hardest"}}))
    with pytest.raises(ConfigError, match=r"^arms.p.selection.rule: hardest"):
        check_config(make_config(arms={"b": {"kind": "baseline"}, "p": {"kind": "proxy", "selection": {"rule": "hardest"}}}))
    check_config(make_config(proxy={"selection": {"rule": "hardest", "max_fraction": 0.1}}))


def test_agreement_of_an_empty_selection_is_empty_not_an_error():
    """The sizing run of study 3: a proxy_tp cycle selected nothing and the agreement stage stopped
    on reshaping no map."""
    from proxyattention.data.erasing import threshold_masks
    from proxyattention.stages.agreement import rank_correlation, top_iou

    none = np.zeros((0, 8, 8), np.float32)
    for mode in ("quantile", "value", "topk_area"):
        masks, thresholds = threshold_masks(none, mode, 0.9)
        assert masks.shape == (0, 8, 8) and len(thresholds) == 0
    assert top_iou(none, none).shape == (0,) and rank_correlation(none, none).shape == (0,)


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 300)
    logits = rng.normal(size=(300, 7)) + 2.0 * np.eye(7)[labels]
    labels[:3] = 6  # a class the model may never predict
    logits[:, 6] -= 10
    m = classification_metrics(logits.astype(np.float32), labels, 7)
    pred = logits.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    for avg in ("macro",):
        p, r, f, _ = skm.precision_recall_fscore_support(labels, pred, average=avg, zero_division=0)
        assert (m["precision_macro"], m["recall_macro"], m["f1_macro"]) == pytest.approx((p, r, f))
    p, r, f, s = skm.precision_recall_fscore_support(labels, pred, labels=range(7), zero_division=0)
    np.testing.assert_allclose(m["precision_per_class"], p)
    np.testing.assert_allclose(m["recall_per_class"], r)
    np.testing.assert_allclose(m["f1_per_class"], f)
    np.testing.assert_array_equal(m["confusion_matrix"], skm.confusion_matrix(labels, pred, labels=range(7)))
    assert m["top5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(labels, logits, k=5, labels=range(7)))
    assert m["val_loss"] == pytest.approx(skm.log_loss(labels, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), labels=range(7)))


def write_metrics(tmp_path, accuracies, ran=None):
    paths = []
    for i, acc in enumerate(accuracies):
        p = tmp_path / f"m{i}.json"
        p.write_text(json.dumps({"accuracy": acc, "ran": True if ran is None else ran[i]}))
        paths.append(p)
    return paths


def test_stop_rule(tmp_path):
    none = {"target_accuracy": None, "patience": None}
    assert decide(3, write_metrics(tmp_path, [0.5, 0.6, 0.7]), none)["run"]
    assert not decide(2, write_metrics(tmp_path, [0.5, 0.91]), {**none, "target_accuracy": 0.9})["run"]
    assert not decide(3, write_metrics(tmp_path, [0.5, 0.6, 0.6]), {**none, "patience": 1})["run"]
    assert decide(3, write_metrics(tmp_path, [0.5, 0.6, 0.6]), {**none, "patience": 2})["run"]
    assert not decide(3, write_metrics(tmp_path, [0.5, 0.6, 0.7], ran=[True, False, False]), none)["run"]


def test_confidence_interval():
    mean, lo, hi, n = mean_ci([0.70, 0.72, 0.74])
    from scipy import stats

    half = stats.t.ppf(0.975, 2) * np.std([0.70, 0.72, 0.74], ddof=1) / np.sqrt(3)
    assert (mean, lo, hi, n) == pytest.approx((0.72, 0.72 - half, 0.72 + half, 3))
    assert np.isnan(mean_ci([0.7])[1])


def test_curves_start_at_the_shared_finetune_even_without_cycles():
    frame = pd.DataFrame({"arm": ["finetune", "proxy", "baseline"], "cycle": [0, 1, 1], "accuracy": [0.5, 0.6, 0.55]})
    curves = with_shared_finetune(frame)
    assert sorted(zip(curves.arm, curves.cycle)) == [("baseline", 0), ("baseline", 1), ("proxy", 0), ("proxy", 1)]
    assert (curves[curves.cycle == 0].accuracy == 0.5).all()
    finetune_only = with_shared_finetune(frame[frame.cycle == 0])  # cycles: 0
    assert list(zip(finetune_only.arm, finetune_only.cycle)) == [("finetune", 0)]


def test_atomic_writes_leave_nothing_on_failure_and_use_umask(tmp_path):
    import os

    from proxyattention.files.atomic import atomic_path, write_json

    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
