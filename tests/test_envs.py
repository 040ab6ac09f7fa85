"""The conda environment for cluster users asks for what pyproject.toml asks for."""

import tomllib

import yaml

from conftest import ROOT


def test_conda_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "envs" / "proxyattention.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(p for p in pip if not p.startswith("--")) == sorted(project)
