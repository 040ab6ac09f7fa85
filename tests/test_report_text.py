"""The report's front page (workflow/report/workflow.rst) rendered as Snakemake renders it (Jinja
with trim_blocks and lstrip_blocks, then docutils): no docutils error for any shipped config, and
one list item per arm. The browser test checks the same in the real report."""

import jinja2
import pytest
import yaml
from conftest import ROOT, shipped_configs
from docutils.core import publish_parts

from proxyattention.settings.validate import validate

CONFIGS = shipped_configs()  # every shipped config, an overlay with the config it extends


class Job:
    def __init__(self, config):
        self.config = config


class Record:
    def __init__(self, path):
        self.path = path


def front_page(config: dict, categories: dict | None = None) -> str:
    template = (ROOT / "workflow" / "report" / "workflow.rst").read_text()
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # snakemake/report/__init__.py
    text = env.from_string(template).render(snakemake=Job(config), categories=categories or {}, files={})
    return publish_parts(text, writer="html", settings_overrides={"report_level": 1})["html_body"]


def compared_record(config: dict, folder) -> dict:
    """The categories entry of aggregate's tables/compared.md, written from ``config``."""
    from proxyattention.files.describe import compared

    path = folder / "compared.md"
    path.write_text(compared(config))
    return {"1. Verdicts": {"": [Record(path)]}}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_front_page_renders_without_a_docutils_message(name, tmp_path):
    """#22.10: the arms list lost its indentation to lstrip_blocks and docutils printed a
    'System Message' on the report's first screen."""
    from proxyattention.settings.arms import _merge

    config = {}
    for path in CONFIGS[name]:
        config = _merge(config, yaml.safe_load(path.read_text()))
    config = validate(config)  # arms as the mapping the report reads
    page = front_page(config, compared_record(config, tmp_path))
    assert "System Message" not in page and "system-message" not in page
    items = page.split("The arms:")[1].split("</ul>")[0].count("<li>")
    assert items == len(config["arms"])


def test_the_front_page_opens_with_the_answer_sentences(tmp_path):
    """#24: the answer the aggregate job wrote (<dataset>_answer.md) is the first thing on the page."""
    import pandas as pd

    from proxyattention.analysis.verdicts import answers

    table = pd.DataFrame([{"dataset": "d", "model": "m", "arm": "proxy", "control": "baseline", "cycle": 3,
                           "split": "validation", "metric": "accuracy", "verdict_holm": "no evidence at this n",
                           "mean_difference": 0.001,
                           "ci_low": -0.004, "ci_high": 0.006, "n_pairs": 6, "mde": 0.0081,
                           "effect_of_interest": 0.005, "pairs_needed": 13.0}])
    (tmp_path / "d_answer.md").write_text(answers(table, ["proxy"]))
    config = validate(yaml.safe_load((ROOT / "config.yaml").read_text()))
    page = front_page(config, {"1. Verdicts": {"": [Record(tmp_path / "d_answer.md")]}})
    assert "System Message" not in page
    first = page.split("What was compared")[0]
    assert "d / m, does Proxy Attention help" in first and "+0.10 points" in first
    assert "could detect 0.81 points" in first and "would need 13 seed pairs" in first


def test_with_too_few_seeds_the_answer_says_so_in_points_and_the_run_warns_at_its_start(tmp_path):
    """#42.3: with 1 or 2 seeds the answer read "interval undefined to undefined" and "could detect
    153.13 points", and the forest plot's axis spanned the MDE ticks (±1.5) in fractions. Now the
    answer says a verdict needs 3 seed pairs, an MDE over 100 points is said in words, the plot
    keeps its axis on the differences (in points), and the run says at its start what its seeds
    cannot give."""
    import numpy as np
    import pandas as pd

    from proxyattention.analysis.verdicts import answers
    from proxyattention.files.layout import verdict_warning

    row = {"dataset": "d", "model": "m", "arm": "proxy", "control": "baseline", "cycle": 1, "split": "validation",
           "metric": "accuracy", "verdict_holm": "no evidence at this n", "effect_of_interest": 0.005}
    two = answers(pd.DataFrame([{**row, "mean_difference": 0.004, "ci_low": np.nan, "ci_high": np.nan, "n_pairs": 2,
                                 "mde": 1.5313, "pairs_needed": 40.0}]), ["proxy"])
    assert "+0.40 points over 2 seed pairs; no interval, detectable effect or verdict (they need at least 3" in two
    assert "undefined" not in two and "153" not in two
    wide = answers(pd.DataFrame([{**row, "mean_difference": 0.004, "ci_low": -0.9, "ci_high": 0.9, "n_pairs": 3,
                                  "mde": 1.2, "pairs_needed": 40.0}]), ["proxy"])
    assert "its detectable effect exceeds 100 points" in wide and "120" not in wide
    config = validate(yaml.safe_load((ROOT / "config.yaml").read_text()))
    for seeds, said in (([0], "1 seed: no comparison"), ([0, 1], "2 seeds: no comparison"), ([0, 1, 2], None)):
        message = verdict_warning({**config, "seeds": seeds})
        assert (message is None) if said is None else message.startswith(said)


def test_every_sentence_of_what_was_compared_comes_from_the_config_that_ran(tmp_path):
    """#42.2: the report said "finetuned from ImageNet weights" of a model with weights: none, "the
    images the previous model got wrong" of a low-confidence arm, nothing of an arm's fill or
    threshold, and "the CNNs beside the ViT" of a run with no ViT. On a config unlike the demo's
    every one of those sentences follows the config."""
    config = validate({
        "datasets": {"pets": {"source": "idx", "path": "workflow/data/fashion_mnist_demo", "image_size": 64}},
        "models": {"r18": {"timm_name": "resnet18", "weights": "none"},
                   "lite0": {"timm_name": "tf_efficientnet_lite0", "weights": "bundled"}},
        "arms": {"baseline": {"kind": "baseline"},
                 "lowconf": {"kind": "proxy", "selection": {"rule": "low_confidence", "confidence_below": 0.3,
                                                            "max_count": 50},
                             "threshold": {"mode": "value", "value": 0.7}, "fill": {"mode": "mean"}},
                 "lowconf_random": {"kind": "random_erase", "matches": "lowconf"}},
        "seeds": [0, 1, 2], "cycles": 1,
    })
    page = front_page(config, compared_record(config, tmp_path))
    text = " ".join(page.split())
    assert "r18 trained from random initialisation (weights: none" in text
    assert "lite0 finetuned from ImageNet weights (the bundled file)" in text
    assert "ImageNet weights (cycle 0)" not in text
    assert ("the training images whose true class the previous model gave a probability below 0.3 (at most 50, "
            "the highest loss first)") in text
    assert "got wrong" not in text
    assert "whose normalised map value is above 0.7" in text and "painted the image's mean colour" in text
    assert "control of lowconf" in text and "changed at a random place (mean fill)" in text
    assert "This run has no ViT" in text and "beside the ViT" not in text
    assert "1 more cycle under each arm, seeds 0, 1, 2" in text
    demo = validate(yaml.safe_load((ROOT / "config.yaml").read_text()))
    demo_text = " ".join(front_page(demo, compared_record(demo, tmp_path)).split())
    assert "beside the ViT (vit_tiny)" in demo_text and "the training images the previous model got wrong" in demo_text


def test_study_three_s_arms_are_described_as_they_run():
    """The hardest-share selection, the training-pass form and the positive control, in words
    taken from config.study3.yaml itself."""
    from proxyattention.files.describe import compared

    config = validate(yaml.safe_load((ROOT / "config.study3.yaml").read_text()))
    text = " ".join(compared(config).split())
    assert ("the training images with the highest loss under the previous model (its misclassified first, then "
            "the least confident right ones) (10% of the training images, the highest loss first)") in text
    assert "as the previous training job's last epoch saw them" in text  # proxy_tp
    assert ("**erasing** (erasing): the original training images only, each randomly erased in every epoch of the "
            "cycles with probability 0.5 (a rectangle of 2% to 33% of the image, height/width 0.3 to 3.3, set to "
            "the model's mean colour), as torchvision's RandomErasing does: a positive control") in text


def test_the_answer_names_the_positive_control_beside_the_proxy_arms():
    import numpy as np
    import pandas as pd

    from proxyattention.analysis.verdicts import answers

    row = {"dataset": "d", "model": "m", "control": "baseline", "cycle": 3, "split": "test", "metric": "accuracy",
           "verdict_holm": "no evidence at this n", "effect_of_interest": 0.005, "ci_low": -0.002, "ci_high": 0.004,
           "n_pairs": 8, "mde": 0.002, "pairs_needed": 5.0}
    table = pd.DataFrame([{**row, "arm": "proxy", "mean_difference": 0.001},
                          {**row, "arm": "erasing", "mean_difference": 0.003},
                          {**row, "arm": "duplicate", "mean_difference": -0.001}])
    text = answers(table, ["proxy"], None, ["erasing"])
    assert "proxy minus baseline: no evidence at this n" in text
    assert "erasing minus baseline (the positive control: can erasing move accuracy here?): no evidence" in text
    assert "duplicate minus" not in text  # a control's own comparison is in the table, not the answer
    assert "erasing" not in answers(table, ["proxy"])  # as before when there is no positive control
    few = answers(pd.DataFrame([{**row, "arm": "erasing", "mean_difference": 0.003, "n_pairs": 1,
                                 "ci_low": np.nan, "ci_high": np.nan}]), [], None, ["erasing"])
    assert "erasing minus baseline (the positive control: can erasing move accuracy here?): +0.30 points over 1" in few
