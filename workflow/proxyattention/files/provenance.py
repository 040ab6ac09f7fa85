"""What made a result: the code's commit, the config's digest and the libraries' versions.

Each training job records the commit it ran from (``train_stats.json`` -> ``metrics.json``);
aggregate gathers them into one ``provenance.json`` beside ``summary.csv``, with the digest of
the whole validated config, so two result folders can be told apart without rerunning anything.
"""

from __future__ import annotations

import hashlib
import html
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[3]  # workflow/proxyattention/files/ -> the checkout


def code_commit(repository: Path = REPOSITORY) -> str:
    """The checkout's commit, with ``-dirty`` when tracked files differ from it; ``unknown``
    outside a git checkout (an installed copy of the package)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(repository), *args], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


def config_digest(config: dict) -> str:
    """sha256 of the validated config as canonical JSON (key order and file layout do not count)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def gather(config: dict, job_versions: list, comparisons: list, stop_rule: bool) -> dict:
    """The provenance of one run: every distinct commit and library version the jobs recorded."""
    commits = sorted({v.get("commit", "unknown") for v in job_versions if v})
    libraries = {}
    for v in job_versions:
        for key, value in (v or {}).items():
            if key != "commit":
                libraries.setdefault(key, set()).add(str(value))
    return {
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "aggregate_commit": code_commit(),
        "job_commits": commits,
        "config_digest": config_digest(config),
        "versions": {k: sorted(v) for k, v in sorted(libraries.items())},
        "comparisons": [list(pair) for pair in comparisons],
        "stop_rule": bool(stop_rule),
        "config": config,
    }


def summary_line(provenance: dict | None) -> str:
    """One line to stamp on a figure or table: commits and the config digest."""
    if not provenance:
        return ""
    commits = provenance.get("job_commits") or [provenance.get("aggregate_commit", "unknown")]
    short = ", ".join(c[:12] + ("-dirty" if c.endswith("-dirty") else "") for c in commits)
    return f"commit {short} · config {provenance.get('config_digest', 'unknown')[:12]}"


def as_html(provenance: dict) -> str:
    """The provenance as a page of the report."""
    rows = [("config digest (sha256)", provenance["config_digest"]),
            ("commits the jobs ran from", ", ".join(provenance["job_commits"]) or "none recorded"),
            ("commit that aggregated", provenance["aggregate_commit"]), ("written", provenance["written"])]
    rows += [(f"version: {k}", ", ".join(v)) for k, v in provenance["versions"].items()]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    warn = ("<p><strong>The jobs ran from more than one commit</strong>: the results mix code versions.</p>"
            if len(provenance["job_commits"]) > 1 else "")
    config = html.escape(json.dumps(provenance["config"], indent=2, sort_keys=True))
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>provenance</title><style>"
            "body{font-family:sans-serif;font-size:14px}th{text-align:left;padding-right:1em}</style></head><body>"
            f"<h3>What made these results</h3>{warn}<table>{body}</table>"
            f"<h4>The validated config</h4><pre>{config}</pre></body></html>")


def read_beside(summary_csv) -> dict | None:
    """``provenance.json`` beside a summary, if there is one."""
    path = Path(summary_csv).with_name("provenance.json")
    return json.loads(path.read_text()) if path.exists() else None
