"""The report's front page (workflow/report/workflow.rst) rendered as Snakemake renders it (Jinja
with trim_blocks and lstrip_blocks, then docutils): no docutils error for any shipped config, and
one list item per arm. The browser test checks the same in the real report."""

import jinja2
import pytest
import yaml
from conftest import ROOT
from docutils.core import publish_parts

from proxyattention.settings.validate import validate

CONFIGS = sorted(p.name for p in ROOT.glob("config*.yaml"))  # every shipped config


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


@pytest.mark.parametrize("name", CONFIGS)
def test_the_front_page_renders_without_a_docutils_message(name):
    """#22.10: the arms list lost its indentation to lstrip_blocks and docutils printed a
    'System Message' on the report's first screen."""
    config = validate(yaml.safe_load((ROOT / name).read_text()))  # arms as the mapping the report reads
    page = front_page(config)
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
