"""The report as a reader opens it: `snakemake --report results/report.html` after a tiny run,
loaded in a real headless Chromium (Debian's package, driven by Playwright with that executable;
nothing is downloaded). Every figure and table must show, and the page must log no console error."""

import shutil

import pandas as pd
import pytest
from conftest import snakemake

from proxyattention.files.report import FIGURE_NAMES

BROWSERS = ("chromium", "chromium-browser")


def browser_path() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on this machine (apt-get install chromium); .ci/run installs it where it can")


def entries(tiny_run) -> dict:
    """What the report must show, per category: files that open inside the report."""
    examples = sorted(p.name for p in (tiny_run / "results" / "figures" / "examples" / "fm" / "lite0").glob("*.png"))
    return {
        "1. Verdicts": ["results/tables/fm_verdicts.html", "results/figures/paired_differences.png"],
        "Figures": [f"results/figures/{n}.png" for n in FIGURE_NAMES if n != "paired_differences"],
        "Examples": [f"results/figures/examples/fm/lite0/{n}" for n in examples],
        "Provenance": ["results/provenance.html"],
    }


def check_front_page(page, body: str, arms: list) -> None:
    """#22.10: no docutils message on the page a reader opens, and the arms as a list, one item each."""
    assert "System Message" not in body and "Bullet list ends" not in body
    items = page.evaluate("[...document.querySelectorAll('li')].map(li => li.innerText)")
    listed = [i for i in items if any(i.startswith(f"{a} (") for a in arms)]
    assert [i.split(" (")[0] for i in listed] == arms, items


@pytest.mark.slow
def test_the_report_front_page_lists_named_arms(six_arm_run):
    executable = browser_path()
    from conftest import NAMED_ARMS
    from playwright.sync_api import sync_playwright

    snakemake(six_arm_run, "--report", "results/report.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto((six_arm_run / "results" / "report.html").as_uri())
        page.wait_for_load_state("networkidle")
        check_front_page(page, page.inner_text("body"), list(NAMED_ARMS))
        assert "Provenance" in page.inner_text("body")
        browser.close()


@pytest.mark.slow
def test_the_report_shows_every_figure_and_table_in_a_browser(tiny_run):
    executable = browser_path()
    from playwright.sync_api import sync_playwright

    snakemake(tiny_run, "--report", "results/report.html")
    url = (tiny_run / "results" / "report.html").as_uri()
    verdict_rows = len(pd.read_csv(tiny_run / "results" / "tables" / "fm_verdicts.csv"))
    import json

    digest = json.loads((tiny_run / "results" / "provenance.json").read_text())["config_digest"]
    errors, shown = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_load_state("networkidle")
        body = page.inner_text("body")
        assert "What was compared" in body and "no evidence at this n" in body  # the opening text
        # #24: the page opens with the answer sentences the aggregate job wrote from the numbers
        assert body.index("fm / lite0, does Proxy Attention help") < body.index("What was compared")
        assert "seed pairs" in body[: body.index("What was compared")]
        check_front_page(page, body, ["baseline", "duplicate", "proxy"])
        assert body.index("1. Verdicts") < body.index("Figures")  # the answer comes first
        assert "Tables" in body  # summary.csv, offered for download
        for category, files in entries(tiny_run).items():
            for name in files:
                page.goto(url)
                page.wait_for_load_state("networkidle")
                page.get_by_text(category, exact=True).click()
                page.locator("tr", has_text=name).locator("a[iconname=eye]").click()
                page.wait_for_timeout(300)
                if name.endswith(".png"):
                    stem = name.rsplit("/", 1)[1]
                    sizes = page.evaluate("[...document.images].filter(i => i.src.includes('filename=' + "
                                          f"{stem!r})).map(i => i.naturalWidth)")
                    assert sizes and all(s > 100 for s in sizes), (category, name, sizes)
                elif name.endswith("verdicts.html"):
                    frames = [f for f in page.frames if "filename=fm_verdicts.html" in f.url]
                    assert frames and frames[0].locator("tbody tr").count() == verdict_rows, (category, name)
                else:  # provenance: the commit and the config digest, as the run recorded them
                    frames = [f for f in page.frames if "filename=provenance.html" in f.url]
                    assert frames and digest in frames[0].inner_text("body"), (category, name)
                shown.append(name)
        browser.close()
    assert errors == []
    assert len(shown) == sum(map(len, entries(tiny_run).values()))
