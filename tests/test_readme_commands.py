"""The README's commands, typed exactly as it writes them, in a folder laid out like a fresh clone
(the repository's own Snakefile, config.yaml, config.thesis.yaml and profiles), as dry-runs where a
real run is impossible here."""

import re
import subprocess

import pytest
import yaml
from conftest import ROOT, user_command


@pytest.fixture
def clone(tmp_path):
    """The repository's files, linked into a fresh folder (no results/, no .snakemake/)."""
    for entry in ROOT.iterdir():
        if entry.name not in {".git", ".venv", ".venv-readme", "results", ".snakemake", ".pytest_cache"}:
            (tmp_path / entry.name).symlink_to(entry)
    return tmp_path


def typed(clone, command: str, env=None):
    proc = subprocess.run(user_command(*command.split()), cwd=clone, capture_output=True, text=True, env=env)
    return proc, proc.stdout + proc.stderr


def job_counts(text: str) -> dict:
    counts = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isidentifier() and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def expected_counts(config: dict) -> dict:
    """Jobs of a grid: in cycle 1 every arm that adds images starts from the shared finetune, so
    arms whose selection and CAM settings are the same (a control that matches a proxy arm has its
    settings) share one find_misclassified and one compute_cams job (arms.owner); from cycle 2 on
    each arm selects and explains on its own model. Every proxy-kind arm's cycle has a
    faithfulness job."""
    from proxyattention.settings.sizes import run_datasets

    runs = len(run_datasets(config)) * len(config["models"]) * len(config["seeds"])  # each training size a run
    cycles = config["cycles"]
    arms = config["arms"] if isinstance(config["arms"], dict) else {a: {"kind": a} for a in config["arms"]}
    adding = [a for a, spec in arms.items() if spec["kind"] in ("duplicate", "proxy", "random_erase")]

    def shared_settings(arm):  # what decides a cycle-1 job's owner here: the arm's (or its match's) overrides
        spec = arms[arm]
        spec = arms[spec["matches"]] if spec.get("matches") else spec
        return repr(sorted((k, v) for k, v in spec.items() if k not in ("kind", "matches", "fill", "threshold")))

    def from_record(arm, key):  # selection.source / maps_source: training_pass, the arm's (its match's) or the section's
        spec = arms[arm]
        spec = arms[spec["matches"]] if spec.get("matches") else spec
        proxy = config.get("proxy", {})
        if key == "selection":
            return spec.get("selection", {}).get("source", proxy.get("selection", {}).get("source")) == "training_pass"
        return spec.get("maps_source", proxy.get("maps_source")) == "training_pass"

    def jobs(group):
        return len({shared_settings(a) for a in group}) + len(group) * (cycles - 1)

    proxies = len([a for a, spec in arms.items() if spec["kind"] == "proxy"])
    counts = {"prepare": len(config["datasets"]), "prepare_masks": len(config["datasets"]), "finetune": runs,
              "retrain": runs * len(arms) * cycles, "evaluate": runs * (1 + len(arms) * cycles),
              "measure": runs * (1 + len(arms) * cycles),
              "find_misclassified": runs * jobs([a for a in adding if not from_record(a, "selection")]),
              "select_from_record": runs * jobs([a for a in adding if from_record(a, "selection")]),
              "compute_cams": runs * jobs([a for a in adding if not from_record(a, "maps")]),
              "maps_from_record": runs * jobs([a for a in adding if from_record(a, "maps")]),
              "mask_and_save": runs * len(adding) * cycles, "faithfulness": runs * proxies * cycles,
              "agreement": runs * cycles * len([a for a, spec in arms.items() if spec["kind"] == "proxy"
                                                and (from_record(a, "selection") or from_record(a, "maps"))])}
    return counts  # zero where the grid has no such job: the plan must then have none


def test_the_demo_command_plans_the_demo_grid(clone):
    proc, out = typed(clone, "snakemake --cores all -n")
    assert proc.returncode == 0, out[-3000:]
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    counts = job_counts(out)
    assert {k: counts.get(k, 0) for k in expected_counts(config)} == expected_counts(config)
    assert "proxyattention grid from config.yaml: 1 dataset (fashion_demo) x 2 models" in out
    assert "4 arms (baseline, duplicate, proxy, random_erase)" in out
    assert "Shell command: None" not in out  # script rules print no empty shell commands


def test_a_config_file_on_the_command_line_is_the_whole_config(clone):
    """`snakemake --configfile config.thesis.yaml`: exactly the thesis grid, nothing of the demo."""
    proc, out = typed(clone, "snakemake -n --configfile config.thesis.yaml")  # torchvision, download: true
    assert proc.returncode == 0, out[-3000:]
    thesis = yaml.safe_load((ROOT / "config.thesis.yaml").read_text())
    counts = job_counts(out)
    assert {k: counts.get(k, 0) for k in expected_counts(thesis)} == expected_counts(thesis)
    assert "fashion_demo" not in out and "vit_tiny" not in out and "tf_efficientnet_lite0" not in out
    assert "grid from config.thesis.yaml: 1 dataset (cifar100) x 4 models" in out


def test_the_thesis_on_slurm_gets_the_profiles_resources(clone):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    proc, out = typed(clone, "snakemake --profile profiles/slurm --configfile config.thesis.yaml -n")
    assert proc.returncode == 0, out[-3000:]
    finetune = re.search(r"rule finetune:.*?resources: ([^\n]*)", out, re.S).group(1)
    for item in ("mem_mb=32000", "runtime=240", "gpu=1", "cpus_per_gpu=8"):
        assert item in finetune.split(", "), finetune


def test_the_by_hand_command_refuses_before_the_run_naming_the_stage_to_run(clone):
    """The README's by-hand example on the demo config, before any run: one line, no traceback,
    naming the stage that makes the missing input."""
    proc, out = typed(clone, "proxyattention compute-cams --config config.yaml --dataset fashion_demo "
                             "--model tf_efficientnet_lite0 --seed 0 --arm proxy --cycle 1")
    assert proc.returncode == 2, out[-3000:]
    assert "made by find-misclassified" in proc.stderr and "Traceback" not in out
    assert not (clone / "results" / "runs").exists()


def planned_as_expected(clone, config_file: str):
    """`snakemake --cores all --configfile CONFIG -n` as typed: its job counts are the grid's."""
    proc, out = typed(clone, f"snakemake --cores all --configfile {config_file} -n")
    assert proc.returncode == 0, out[-3000:]
    want = expected_counts(yaml.safe_load((ROOT / config_file).read_text()))
    assert {k: job_counts(out).get(k, 0) for k in want} == want
    return out, want


def test_the_training_pass_command_plans_both_forms_without_the_separate_passes_for_one(clone):
    """README's training-pass config, as a dry-run: proxy_tp and its control plan no find/CAM jobs."""
    out, want = planned_as_expected(clone, "config.training_pass.yaml")
    assert want["select_from_record"] == want["find_misclassified"] == 6 and want["agreement"] == 4
    assert "config.training_pass.yaml" in (ROOT / "README.md").read_text()


def test_the_sizes_command_plans_every_size_from_one_preparation(clone):
    """README's less-data config, as a dry-run: three sizes of one dataset, one prepare job."""
    out, want = planned_as_expected(clone, "config.sizes.yaml")
    assert want["prepare"] == 1 and want["finetune"] == 3 * 2
    assert "1 dataset (fashion_demo) x 3 training sizes (fashion_demo/n5pc, fashion_demo/n15pc, fashion_demo/n50pc)" in out
    assert "snakemake --cores all --configfile config.sizes.yaml" in (ROOT / "README.md").read_text()


def test_the_study_command_plans_the_study_grid(clone):
    """docs/study.md's command, as a dry-run: six seeds x four arms x three cycles of one model."""
    proc, out = typed(clone, "snakemake --cores all --configfile config.study.yaml -n")
    assert proc.returncode == 0, out[-3000:]
    study = yaml.safe_load((ROOT / "config.study.yaml").read_text())
    assert len(study["seeds"]) >= 5 and study["cycles"] >= 3 and study["datasets"]["fashion_mnist"]["train_subset"]
    counts = job_counts(out)
    assert {k: counts.get(k, 0) for k in expected_counts(study)} == expected_counts(study)
    assert "grid from config.study.yaml: 1 dataset (fashion_mnist) x 1 model (tf_efficientnet_lite0)" in out
    assert "config.study.yaml" in (ROOT / "docs" / "study.md").read_text()


def test_the_second_study_command_plans_its_design(clone):
    """docs/study.md's study 2 command, as a dry-run: 8 seeds, the five named arms of its design
    (the thesis's settings among them), two continued cycles, 10,000 test images."""
    proc, out = typed(clone, "snakemake --cores all --configfile config.study2.yaml -n")
    assert proc.returncode == 0, out[-3000:]
    study = yaml.safe_load((ROOT / "config.study2.yaml").read_text())
    assert len(study["seeds"]) >= 8 and study["training"]["cycle_mode"] == "continue"
    assert "val_subset" not in study["datasets"]["fashion_mnist"]  # the whole official test split
    counts = job_counts(out)
    runs = len(study["seeds"])
    assert counts["finetune"] == runs and counts["retrain"] == runs * len(study["arms"]) * study["cycles"]
    assert "5 arms (baseline, duplicate, proxy, random_erase, thesis)" in out
    assert "config.study2.yaml" in (ROOT / "docs" / "study.md").read_text()


def test_the_third_study_command_plans_its_design(clone):
    """docs/study.md's study 3 command, as a dry-run: 8 seeds x 3 training sizes, the six arms of
    its design (the training-pass form and the positive control among them), three continued
    cycles; and its sizing run's command (one seed outside the study's, a folder of its own)."""
    from pathlib import Path

    study = yaml.safe_load((ROOT / "config.study3.yaml").read_text())
    if not Path(study["datasets"]["fashion_mnist"]["path"]).is_dir():
        pytest.skip(f"{study['datasets']['fashion_mnist']['path']} is absent: apt install dataset-fashion-mnist")
    proc, out = typed(clone, "snakemake --cores all --configfile config.study3.yaml -n")
    assert proc.returncode == 0, out[-3000:]
    assert len(study["seeds"]) >= 8 and study["cycles"] >= 3 and study["training"]["cycle_mode"] == "continue"
    assert "val_subset" not in study["datasets"]["fashion_mnist"]  # the whole official test split
    counts = job_counts(out)
    assert {k: counts.get(k, 0) for k in expected_counts(study)} == expected_counts(study)
    assert ("3 training sizes (fashion_mnist/n20pc, fashion_mnist/n60pc, fashion_mnist/n200pc) x 1 model "
            "(tf_efficientnet_lite0) x 6 arms (baseline, duplicate, proxy, random_erase, proxy_tp, erasing) x 8 seeds"
            in out)
    sizing = "snakemake --cores all --configfile config.study3.yaml config.study3.sizing.yaml"
    proc, out = typed(clone, sizing + " -n")
    assert proc.returncode == 0 and "x 1 seed (100) x 3 cycles" in out and "results in results/study3_sizing/" in out
    docs = (ROOT / "docs" / "study.md").read_text()
    assert "snakemake --cores all --configfile config.study3.yaml\n" in docs and sizing in docs


def test_the_gpu_bench_says_plainly_when_there_is_no_gpu(clone):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the command would run its full benchmark")
    proc, out = typed(clone, "python bench/run.py --gpu")
    assert proc.returncode == 2 and "torch sees no GPU here" in out, out[-2000:]


def test_the_layer_pilot_commands_run_as_typed(clone):
    """README's two layer-pilot commands, typed in a fresh clone with the demo's config: --list names
    each stage's layer with its map size (no checkpoint needed); the pilot itself, before any run,
    stops in one line naming the missing checkpoint and the command that makes it."""
    readme = (ROOT / "README.md").read_text()
    listing = ("python -m proxyattention.stages.layer_pilot --config config.yaml --dataset fashion_demo "
               "--model tf_efficientnet_lite0 --list")
    pilot = listing.removesuffix(" --list")
    assert listing in readme and pilot + "\n" in readme
    proc, out = typed(clone, listing)
    assert proc.returncode == 0, out[-2000:]
    assert "blocks.2                 8 x 8" in out and "blocks.4                 4 x 4   (the config's target_layer)" in out
    proc, out = typed(clone, pilot)
    assert proc.returncode != 0 and "Traceback" not in out
    assert "no finetuned checkpoint" in out and "proxyattention finetune --dataset fashion_demo" in out


def test_a_list_given_with_config_on_the_command_line_is_typed_as_in_a_file(clone):
    """#42.6: `--config seeds=[0,1]` reached the schema as ["0", "1"] (Snakemake's BaseLoader) and
    was refused, blaming the config file; now its items are typed as YAML types them, and a refusal
    names --config beside the file."""
    proc, out = typed(clone, "snakemake -n --cores all --config seeds=[0,1,2]")
    assert proc.returncode == 0, out[-3000:]
    assert "x 3 seeds (0, 1, 2) x" in out
    proc, out = typed(clone, "snakemake -n --cores all --config seeds=[0,-1]")
    assert proc.returncode != 0
    assert "invalid config at 'seeds.1'" in out and "(config file: config.yaml; with --config seeds=[0,-1])" in out


def test_the_command_that_makes_one_deleted_output_again_plans_its_job_and_what_it_needs(clone):
    """README "When something goes wrong", as typed in a fresh clone: naming one run's cams.npz
    plans the chain that makes it (preparation, finetune and its evaluation, selection, its CAM job) and nothing made
    from it; `snakemake -n --forcerun compute_cams` is valid there too. (On a finished run, naming
    the file plans its one job: test_workflow.py.)"""
    readme = (ROOT / "README.md").read_text()
    command = "snakemake -n results/runs/fashion_demo/tf_efficientnet_lite0/seed0/proxy/cycle1/cams.npz"
    assert f"\n  {command}\n" in readme
    proc, out = typed(clone, command)
    assert proc.returncode == 0, out[-3000:]
    counts = job_counts(out)
    assert counts["compute_cams"] == 1 and counts["finetune"] == 1 and counts["find_misclassified"] == 1, counts
    assert counts.get("evaluate") == 1  # the finetune's: the stop rule decides whether cycle 1 runs
    assert not {"mask_and_save", "retrain", "measure"} & set(counts), counts
    assert "snakemake -n --forcerun compute_cams" in readme
    proc, out = typed(clone, "snakemake -n --forcerun compute_cams")
    assert proc.returncode == 0 and job_counts(out)["compute_cams"] > 0, out[-3000:]


def test_the_config_check_names_the_file_and_line_snakemake_does_not(clone):
    """#42.6: a tab in a config's indentation got Snakemake's "Config file is not valid JSON or
    YAML", naming no file or line. README's `proxyattention check --config my.yaml` names both,
    and on a good file prints the grid and what its seeds cannot give."""
    (clone / "my.yaml").write_text("datasets:\n\tfm:\n    source: idx\n")
    assert "`proxyattention check --config my.yaml`" in (ROOT / "README.md").read_text()
    proc, out = typed(clone, "proxyattention check --config my.yaml")
    assert proc.returncode == 2, out
    assert "my.yaml: not valid YAML" in out and "line 2, column 1" in out and "not tabs" in out
    proc, out = typed(clone, "proxyattention check --config config.yaml")
    assert proc.returncode == 0, out
    assert "proxyattention grid from config.yaml" in out and "2 seeds: no comparison will get an interval" in out


def test_the_short_console_command_prints_the_grid_and_the_job_table_only(clone):
    """#42 (smaller): a 131-job run printed 2,105 console lines. README's `--quiet rules` keeps the
    grid, the job table and the progress: under 100 lines for the demo's plan."""
    assert "`snakemake --cores all --quiet rules`" in (ROOT / "README.md").read_text()
    proc, out = typed(clone, "snakemake --cores all --quiet rules -n")
    assert proc.returncode == 0, out[-3000:]
    assert "proxyattention grid from" in out and job_counts(out)["finetune"] == 4
    assert len(out.splitlines()) < 100 and "rule retrain:" not in out
