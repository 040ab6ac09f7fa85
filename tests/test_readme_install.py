"""The README's first command as a user types it: an environment installed with `pip install -e .`
alone (no test extra), then the steps the README documents after it. CI makes that environment
(.ci/run: `.venv-readme`, named by PA_README_VENV); the test extra must not hide what it lacks."""

import os
import re
import subprocess
import tomllib
from importlib.metadata import metadata
from pathlib import Path

import pytest
import yaml
from conftest import ROOT


def readme_env() -> Path:
    """The bin/ of an environment installed exactly as the README's first command installs it."""
    path = os.environ.get("PA_README_VENV") or str(ROOT / ".venv-readme")
    if not (Path(path) / "bin" / "snakemake").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path}: no environment installed as the README's first command (.ci/run makes it)")
        pytest.skip(f"{path} does not exist: python3 -m venv .venv-readme && .venv-readme/bin/pip install -e .")
    return Path(path) / "bin"


def test_the_readme_install_brings_what_its_next_steps_need():
    """`pip install -e .` alone must bring pygments, which `snakemake --report` needs, and must not
    bring the test extra (so this environment tells what a user has)."""
    python = readme_env() / "python"
    proc = subprocess.run([str(python), "-c", "import pygments, snakemake, proxyattention; print('ok')"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert subprocess.run([str(python), "-c", "import pytest"], capture_output=True).returncode != 0


@pytest.mark.slow
def test_the_report_command_runs_after_the_readme_install(tiny_run):
    """#22.12: after the README's install and a run, its next step `snakemake --report
    results/report.html` writes the report (it stopped with 'pygments must be installed')."""
    bin_dir = readme_env()
    proc = subprocess.run([str(bin_dir / "snakemake"), "--report", "results/report.html", "--configfile",
                           "config.yaml", "--snakefile", str(ROOT / "Snakefile")], cwd=tiny_run,
                          capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (tiny_run / "results" / "report.html").stat().st_size > 100_000
    assert "snakemake --report results/report.html" in (ROOT / "README.md").read_text()


def floor(spec: str) -> tuple:
    match = re.search(r">=\s*(\d+)\.(\d+)", spec)
    return (int(match.group(1)), int(match.group(2)))


def test_the_python_floor_is_true_everywhere_it_is_stated():
    """#22.13: README and pyproject said Python >= 3.10 while Snakemake 9 needs 3.11."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ours = floor(project["requires-python"])
    assert ours >= floor(metadata("snakemake")["Requires-Python"])
    readme = re.search(r"Python ≥ (\d+)\.(\d+)", (ROOT / "README.md").read_text())
    assert (int(readme.group(1)), int(readme.group(2))) == ours
    env = yaml.safe_load((ROOT / "envs" / "proxyattention.yaml").read_text())
    conda_python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert tuple(map(int, conda_python.split("=")[1].split("."))) >= ours
