"""The report's front page (workflow/report/workflow.rst) rendered as Snakemake renders it (Jinja
with trim_blocks and lstrip_blocks, then docutils): no docutils error for any shipped config, and
one list item per arm. The browser test checks the same in the real report."""

import jinja2
import pytest
import yaml
from docutils.core import publish_parts

from conftest import ROOT
from proxyattention.config import validate

CONFIGS = ["config.yaml", "config.variants.yaml", "config.thesis.yaml", "config.study.yaml"]


class Job:
    def __init__(self, config):
        self.config = config


def front_page(config: dict) -> str:
    template = (ROOT / "workflow" / "report" / "workflow.rst").read_text()
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # snakemake/report/__init__.py
    return publish_parts(env.from_string(template).render(snakemake=Job(config)), writer="html",
                         settings_overrides={"report_level": 1})["html_body"]


@pytest.mark.parametrize("name", CONFIGS)
def test_the_front_page_renders_without_a_docutils_message(name):
    """#22.10: the arms list lost its indentation to lstrip_blocks and docutils printed a
    'System Message' on the report's first screen."""
    config = validate(yaml.safe_load((ROOT / name).read_text()))  # arms as the mapping the report reads
    page = front_page(config)
    assert "System Message" not in page and "system-message" not in page
    items = page.split("The arms:")[1].split("</ul>")[0].count("<li>")
    assert items == len(config["arms"])
