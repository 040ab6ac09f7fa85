"""The conda environment for cluster users asks for what pyproject.toml asks for."""

import sys
import tomllib

import yaml
from conftest import ROOT


def test_conda_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "envs" / "proxyattention.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(p for p in pip if not p.startswith("--")) == sorted(project)


def test_conda_env_names_no_local_path():
    """Snakemake creates the env from a copy under .snakemake/conda/<hash>.yaml: a relative path
    (such as --editable=..) would point elsewhere there. Every entry must be a registry package."""
    env = yaml.safe_load((ROOT / "envs" / "proxyattention.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert not [p for p in pip if p.startswith("-") or "/" in p or p.startswith(".")]


def test_scripts_find_the_stage_package_without_it_being_installed(tmp_path):
    """What a job in such an env does: a Python without this project's site-packages (-S, -I)
    runs a script's first line from Snakemake's search path and imports the checkout's package."""
    import subprocess

    scripts = ROOT / "workflow" / "scripts"
    code = (f"import sys; sys.path.append({str(scripts)!r}); import stage_package, proxyattention; "
            "print(proxyattention.__file__)")
    proc = subprocess.run([sys.executable, "-S", "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(ROOT / "workflow" / "proxyattention" / "__init__.py")
    for script in scripts.glob("*.py"):
        if script.name != "stage_package.py":
            assert script.read_text().startswith("import stage_package"), script


def test_torch_floor_admits_no_release_whose_safe_load_runs_code():
    """#27.12: torch.load(weights_only=True) could still run code before 2.6 (GHSA-53q9-r3pm-6pq6);
    resume state is read that way, so no such release may satisfy the requirement."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(Requirement(d) for d in project if Requirement(d).name == "torch")
    assert not torch.specifier.contains("2.5.1") and not torch.specifier.contains("2.4.0")
    assert torch.specifier.contains("2.6.0") and torch.specifier.contains("2.14.1")
