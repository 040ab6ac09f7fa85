"""The conda environment for cluster users asks for what pyproject.toml asks for."""

import sys

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10, which pyproject.toml allows: tomllib's origin
    import tomli as tomllib

from conftest import ROOT


def test_conda_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "envs" / "proxyattention.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(p for p in pip if not p.startswith("--")) == sorted(project)
