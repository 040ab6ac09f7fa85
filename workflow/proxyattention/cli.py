"""``proxyattention``: rerun one stage by hand, exactly as the workflow runs it.

    proxyattention STAGE [--config config.yaml] --dataset D [--model M --seed S --arm A --cycle C]
    proxyattention check [--config config.yaml]

The command names the one output file of that stage's job and has Snakemake run
that job alone (``--forcerun FILE --allowed-rules RULE``): the inputs, params,
threads and script are the rule's own, read from the one definition in
``workflow/rules/``, so a stage rerun by hand writes what the workflow writes,
and a cycle the stop rule skipped stays skipped. Names that the config does not
have, a stage that the workflow never runs for that arm or cycle, and inputs that
are not there yet are refused in one line (naming the stage that makes them)
before any model is loaded. Stages: prepare, prepare-masks, finetune, retrain,
find-misclassified, compute-cams, select-from-record, maps-from-record, mask-and-save, evaluate,
measure, faithfulness, agreement.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from .files import layout
from .settings.arms import ADDING_KINDS, maps_from_record, names_of_kind, selects_from_record
from .settings.sizes import run_datasets
from .settings.stage_settings import owner

SNAKEFILE = Path(__file__).resolve().parents[2] / "Snakefile"

# stage -> (rule, the output file of its job that names the job)
STAGES = {
    "prepare": ("prepare", "images.npy"),
    "prepare-masks": ("prepare_masks", "masks.npy"),
    "finetune": ("finetune", "model.safetensors"),
    "retrain": ("retrain", "model.safetensors"),
    "find-misclassified": ("find_misclassified", "selected.csv"),
    "compute-cams": ("compute_cams", "cams.npz"),
    "select-from-record": ("select_from_record", "selected.csv"),
    "maps-from-record": ("maps_from_record", "cams.npz"),
    "mask-and-save": ("mask_and_save", "erased.npz"),
    "evaluate": ("evaluate", "metrics.json"),
    "measure": ("measure", "measures.json"),
    "faithfulness": ("faithfulness", "faithfulness.json"),
    "agreement": ("agreement", "agreement.json"),
}
# The stage whose job writes a file of this name (for "missing input" messages).
MADE_BY = {
    "images.npy": "prepare", "index.csv": "prepare", "classes.json": "prepare", "masks.npy": "prepare_masks",
    "model.safetensors": "finetune (cycle 0) or retrain", "model.json": "finetune (cycle 0) or retrain",
    "train_stats.json": "finetune (cycle 0) or retrain", "training_pass.npz": "finetune (cycle 0) or retrain", "optimizer.safetensors": "finetune (cycle 0) or retrain", "decision.json": "the workflow's stop rule (decide_cycle)",
    "selected.csv": "find-misclassified", "cams.npz": "compute-cams", "erased.npz": "mask-and-save",
    "metrics.json": "evaluate", "per_image.npz": "evaluate", "measures.json": "measure",
    "faithfulness.json": "faithfulness", "agreement.json": "agreement",
}


class UsageError(ValueError):
    """A by-hand command the workflow would never run; the message says what is allowed."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="proxyattention", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=list(STAGES))
    parser.add_argument("--config", default="config.yaml", help="workflow config (default: config.yaml)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arm", default=layout.FINETUNE)
    parser.add_argument("--cycle", type=int, default=0)
    parser.add_argument("--cores", default="all", help="as the workflow's --cores: caps the stage's threads (default: all)")
    parser.add_argument("--device", help="cpu, or cuda:N for the N-th GPU this process may use (within "
                        "CUDA_VISIBLE_DEVICES when it is set; default: the workflow's choice)")
    return parser.parse_args(argv)


def check_cell(config: dict, args: argparse.Namespace) -> None:
    """Refuse, in one line, what the workflow would never run."""
    def known(kind: str, name, names) -> None:
        if name not in names:
            raise UsageError(f"--{kind} {name} is not in the config's {kind}s (it has: {', '.join(map(str, names))})")

    if args.stage in ("prepare", "prepare-masks"):  # one preparation serves every training size
        known("dataset", args.dataset, list(config["datasets"]))
        return
    known("dataset", args.dataset, run_datasets(config))  # a training size's: name/n20pc
    if args.model is None:
        raise UsageError(f"{args.stage} needs --model (the config has: {', '.join(config['models'])})")
    known("model", args.model, list(config["models"]))
    known("seed", args.seed, config["seeds"])
    if args.stage == "finetune" or (args.stage in ("evaluate", "measure") and args.cycle == 0):
        if (args.arm, args.cycle) != (layout.FINETUNE, 0):
            raise UsageError(f"{args.stage} of the shared finetune is --arm finetune --cycle 0; "
                             f"cycles 1 to {config['cycles']} are retrain's")
        return
    known("arm", args.arm, list(config["arms"]))
    if not 1 <= args.cycle <= config["cycles"]:
        raise UsageError(f"{args.stage} runs in cycles 1 to {config['cycles']}, not --cycle {args.cycle} "
                         "(cycle 0 is the shared finetune)")
    adding = names_of_kind(config, *ADDING_KINDS)
    record_stages = {"find-misclassified": ("select-from-record", selects_from_record),
                     "compute-cams": ("maps-from-record", maps_from_record)}
    for separate, (recorded, reads) in record_stages.items():
        if args.stage in (separate, recorded) and args.arm in adding:
            wanted = recorded if reads(config, args.arm) else separate
            if args.stage != wanted:
                source = "the previous training job's record" if wanted == recorded else "a separate pass"
                raise UsageError(f"the {args.arm} arm's {'selection' if separate == 'find-misclassified' else 'maps'}"
                                 f" come from {source}: rerun {wanted}")
    if args.stage in ("find-misclassified", "compute-cams", "select-from-record", "maps-from-record",
                      "mask-and-save") and args.arm not in adding:
        raise UsageError(f"the {args.arm} arm adds no images: {args.stage} runs only for the arms "
                         f"{', '.join(adding)}")
    proxies = names_of_kind(config, "proxy")
    if args.stage == "faithfulness" and args.arm not in proxies:
        raise UsageError(f"faithfulness scores the maps of the proxy-kind arms only: {', '.join(proxies) or 'none'}")
    readers = [a for a in proxies if selects_from_record(config, a) or maps_from_record(config, a)]
    if args.stage == "agreement" and args.arm not in readers:
        raise UsageError(f"agreement compares the training-pass proxy arms with the separate passes: "
                         f"{', '.join(readers) or 'this config has none'}")
    if args.stage in ("find-misclassified", "compute-cams", "select-from-record", "maps-from-record"):
        stage = {"select-from-record": "find_misclassified", "maps-from-record": "compute_cams"}.get(
            args.stage, args.stage.replace("-", "_"))
        shared = owner(config, args.dataset, args.model, args.arm, args.cycle, stage)
        if shared != args.arm:
            raise UsageError(f"in cycle {args.cycle} the {args.arm} arm uses the {args.stage} job of the {shared} arm "
                             f"(same settings, shared finetune): rerun it with --arm {shared}")


def target_of(config: dict, args: argparse.Namespace) -> str:
    rule, name = STAGES[args.stage]
    if rule in ("prepare", "prepare_masks"):
        return f"{layout.prepared_dir(config['results'], args.dataset)}/{name}"
    return f"{layout.run_dir(config['results'], args.dataset, args.model, args.seed, args.arm, args.cycle)}/{name}"


def missing_inputs(output: str) -> list[str]:
    """The files Snakemake reports missing for the job (from its MissingInputException)."""
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "affected files:")
    except StopIteration:
        return []
    files = []
    for line in lines[start + 1:]:
        if not line.startswith(" ") or not line.strip():
            break
        files.append(line.strip())
    return files


def snakemake_command(config_path: str, target: str, rule: str, cores: str, *extra: str) -> list[str]:
    # the target first: --forcerun, --allowed-rules, --configfile and --config take every word after them
    return [sys.executable, "-m", "snakemake", target, "--snakefile", str(SNAKEFILE), "--cores", cores,
            "--forcerun", target, "--allowed-rules", rule, *extra, "--configfile", config_path,
            "--config", "warm_start=False"]


def device_env(device: str | None) -> dict:
    env = dict(os.environ)
    if device is None:
        return env
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif re.fullmatch(r"cuda:\d+", device):
        n = int(device.split(":")[1])
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is None:  # the machine's own numbering
            env["CUDA_VISIBLE_DEVICES"] = str(n)
        else:  # counted within the GPUs the user already chose, as torch counts them
            chosen = [d.strip() for d in visible.split(",") if d.strip()]
            if n >= len(chosen):
                raise UsageError(f"--device {device}: {len(chosen)} GPUs are visible (CUDA_VISIBLE_DEVICES={visible}); "
                                 f"use cuda:0 to cuda:{len(chosen) - 1}" if chosen else
                                 f"--device {device}: no GPU is visible (CUDA_VISIBLE_DEVICES is empty)")
            env["CUDA_VISIBLE_DEVICES"] = chosen[n]
    else:
        raise UsageError(f"--device {device}: use cpu or cuda:N")
    return env


def check(argv) -> int:
    """``proxyattention check --config FILE``: the checks a run makes before any job, without
    Snakemake (whose own message for a file that is not YAML names neither the file nor the line):
    the YAML with its line and column, the schema, the paths and sources, the models and layers;
    then the run's grid."""
    parser = argparse.ArgumentParser(prog="proxyattention check", description=check.__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="config.yaml", help="workflow config (default: config.yaml)")
    args = parser.parse_args(argv)
    from .settings.model_checks import ModelCheckError, check_models
    from .settings.schema import ConfigError
    from .settings.validate import load_config

    try:
        config = load_config(args.config)
        warnings = check_models(config)
    except (ConfigError, ModelCheckError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if (message := layout.verdict_warning(config)) is not None:
        warnings.append(message)
    for message in warnings:
        print(f"warning: {message}", file=sys.stderr)
    print(layout.describe_grid(config, [args.config]))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check"]:
        return check(argv[1:])
    args = parse_args(argv)
    from .settings.schema import ConfigError
    from .settings.validate import load_config

    try:
        config = load_config(args.config)
        check_cell(config, args)
        env = device_env(args.device)
    except (ConfigError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rule = STAGES[args.stage][0]
    target = target_of(config, args)
    # First a dry run: inputs that are not there stop here, naming the stage that makes them.
    plan = subprocess.run(snakemake_command(args.config, target, rule, args.cores, "--dry-run"),
                          capture_output=True, text=True, env=env)
    if plan.returncode != 0:
        missing = missing_inputs(plan.stdout + plan.stderr)
        if missing:
            made = "; ".join(f"{path} (made by {MADE_BY.get(Path(path).name, 'the workflow')})" for path in missing)
            print(f"error: {args.stage} needs files that are not there yet: {made}. Run that stage first, "
                  f"or the workflow: snakemake --cores all {target}", file=sys.stderr)
        else:
            print((plan.stdout + plan.stderr)[-4000:], file=sys.stderr)
        return 2
    outputs = job_outputs(plan.stdout, rule)
    with kept_if_unchanged(outputs) as kept:
        returncode = subprocess.run(snakemake_command(args.config, target, rule, args.cores), env=env).returncode
        kept.succeeded = returncode == 0
    if kept.unchanged:
        print(f"{len(kept.unchanged)} output(s) came out byte for byte as before and keep their old files "
              f"(so nothing after them reruns): {', '.join(kept.unchanged)}", file=sys.stderr)
    return returncode


def job_outputs(plan: str, rule: str) -> list[str]:
    """The output paths of the one ``rule`` job of a dry run's plan."""
    lines = plan.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"rule {rule}:":
            for follow in lines[i + 1:i + 8]:
                if follow.strip().startswith("output:"):
                    return [p.strip() for p in follow.split("output:", 1)[1].split(",") if p.strip()]
    return []


def _same(a: Path, b: Path) -> bool:
    """Files with the same bytes, or folders holding the same files with the same bytes."""
    import filecmp

    if a.is_dir() and b.is_dir():
        files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()
                                 and p.name != ".snakemake_timestamp")
        return files(a) == files(b) and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files(a))
    return a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False)


class _Kept:
    def __init__(self):
        self.succeeded, self.unchanged = False, []


@contextmanager
def kept_if_unchanged(outputs: list[str]):
    """Around a by-hand rerun: the outputs as they were (hard links, so no copy of the bytes) are set
    aside; each output the rerun writes byte for byte as before gets its old file back, with its old
    modification time, so the next ``snakemake`` plans nothing after it (Snakemake deletes a job's
    outputs before running it). If the rerun fails, every old output comes back."""
    import shutil
    import tempfile

    kept = _Kept()
    existing = [Path(o) for o in outputs if Path(o).exists()]
    if not existing:
        yield kept
        return
    backup = Path(tempfile.mkdtemp(prefix=".byhand-", dir=existing[0].parent))
    saved = {}
    try:
        for i, path in enumerate(existing):
            copy = backup / f"{i}_{path.name}"
            if path.is_dir():
                shutil.copytree(path, copy, copy_function=os.link)
                stat = path.stat()
                os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            else:
                os.link(path, copy)
            saved[path] = copy
        try:
            yield kept
        except BaseException:  # Ctrl-C, or any error: the old outputs come back
            kept.succeeded = False
            raise
        finally:
            _restore(saved, kept)
    finally:
        shutil.rmtree(backup, ignore_errors=True)


def _restore(saved: dict, kept: _Kept) -> None:
    import shutil

    for path, copy in saved.items():
        if not kept.succeeded or _same(path, copy):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            os.replace(copy, path)
            if kept.succeeded:
                kept.unchanged.append(str(path))


if __name__ == "__main__":
    sys.exit(main())
