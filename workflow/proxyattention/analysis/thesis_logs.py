"""The thesis's cited CIFAR-100 numbers, recomputed from the run logs committed in its repository.

    python -m proxyattention.analysis.thesis_logs PATH_TO_A_CHECKOUT_OF_proxy_attention

The thesis (``SubhadityaMukherjee/proxy_attention``) logs every training *step* to its own
TensorBoard events file (``training.py`` 413-415 opens a ``SummaryWriter`` per step);
``result_aggregator.py`` (76-86) makes one row per events file holding its last ``Acc/Val``;
``log_viewer.ipynb`` (cells 15, 23 and 27) maps both ``[20, 'p', 19]`` and
``[5, 'p', 9, 'p', 9, 'p', 9, 'p', 4]`` to "Proxy" and ``[40]`` to "No Proxy" and takes the mean
accuracy per (dataset, model, group). This module repeats exactly that on the two pickled tables
the repository holds (read with ``git show``, so a bare clone serves as well as a checkout) and
prints the rows behind each cited number. The pickles are read by an unpickler that admits only
pandas and numpy classes (and ``builtins.slice``, which a pickled RangeIndex holds).
"""

from __future__ import annotations

import argparse
import io
import pickle
import subprocess
from pathlib import Path

import pandas as pd

# (commit, path): the ResNet-18 rows are in restored_runs.csv at the last commit; the ViT rows in
# aggregated_runs.csv at 09069ed (the last commit's aggregated_runs.csv is not stored in every clone).
TABLES = (("ad87b31", "src/results/restored_runs.csv"), ("09069ed", "src/results/aggregated_runs.csv"))
GROUPS = {"[20, 'p', 19]": "Proxy", "[5, 'p', 9, 'p', 9, 'p', 9, 'p', 4]": "Proxy", "[40]": "No Proxy"}
CITED = {("resnet18", "Proxy"): 76.50, ("resnet18", "No Proxy"): 71.00,
         ("vit_base_patch16_224", "Proxy"): 75.65, ("vit_base_patch16_224", "No Proxy"): 54.91}
SHOWN = ["model", "step_schedule", "run", "global_run_count", "proxy_step", "batch_size",
         "change_subset_attention", "proxy_image_weight", "proxy_threshold", "Number_Chosen",
         "schedule_trained_proxies", "accuracy"]


class PandasOnlyUnpickler(pickle.Unpickler):
    """Builds pandas and numpy objects only: a pickle asking for anything else is refused."""

    def find_class(self, module: str, name: str):
        if module.split(".")[0] in ("pandas", "numpy") or (module, name) == ("builtins", "slice"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} from a thesis log table")


def read_table(repository: Path, commit: str, path: str) -> pd.DataFrame:
    """The one-element tuple of a pickled table at ``commit:path`` in ``repository``: its table."""
    data = subprocess.run(["git", "-C", str(repository), "show", f"{commit}:{path}"],
                          check=True, capture_output=True).stdout
    loaded = PandasOnlyUnpickler(io.BytesIO(data)).load()
    if not (isinstance(loaded, tuple) and len(loaded) == 1 and isinstance(loaded[0], pd.DataFrame)):
        raise ValueError(f"{commit}:{path} does not hold a one-element tuple with a table")
    return loaded[0]


def trained_on_proxies(schedule: str, step_end: int) -> bool:
    """Whether the model that wrote this step's row had trained on any proxy image.

    Proxies are made after each ``"p"`` epoch and trained on only in later ``"p"`` epochs
    (numeric steps leave them out, ``meta_utils.py`` 156-157); the run starts by deleting old ones
    (``training.py`` 466). So a row has seen proxies only if a ``"p"`` epoch ended at or before it
    that was not the first ``"p"`` of the run.
    """
    steps = [s.strip().strip("'") for s in schedule.strip("[]").split(",")]
    epoch, p_seen = 0, 0
    for step in steps:
        epoch += 1 if step == "p" else int(step)
        if epoch > step_end:
            break
        if step == "p":
            p_seen += 1
            if p_seen >= 2:
                return True
    return False


def cited_rows(repository: Path) -> pd.DataFrame:
    """The CIFAR-100 rows of the four cited groups, preprocessed as ``log_viewer.ipynb`` cell 15 does."""
    df = pd.concat([read_table(repository, c, p) for c, p in TABLES], axis=0).fillna(0)
    df = df.rename(columns={"Acc/Val": "accuracy", "proxy_steps": "step_schedule"})
    df["accuracy"] = df["accuracy"].astype(float)
    df["global_run_count"] = df["global_run_count"].astype(int)
    for column, kind in (("batch_size", int), ("Number_Chosen", int), ("change_subset_attention", float),
                         ("proxy_image_weight", float), ("proxy_threshold", float)):
        df[column] = df[column].astype(float).astype(kind)
    df = df[(df["ds_name"] != "0") & (df["global_run_count"] != 0)]
    df = df[(df["ds_name"] == "cifar100") & df["model"].isin({m for m, _ in CITED})].copy()
    df["group"] = df["step_schedule"].map(GROUPS)
    df = df[df["group"].notna()]
    df["run"] = df["fname_start"].astype(str).str.rsplit("/", n=1).str[-1]
    df["schedule_trained_proxies"] = [trained_on_proxies(s, int(e)) for s, e in zip(df["step_schedule"], df["global_run_count"])]
    return df.sort_values(["model", "group", "run", "global_run_count"]).reset_index(drop=True)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per model and group: the mean the thesis cites, its rows, runs and rows without proxy training."""
    out = rows.groupby(["model", "group"], sort=False).agg(
        mean_accuracy=("accuracy", "mean"), rows=("accuracy", "size"), runs=("run", "nunique"),
        rows_before_any_proxy_training=("schedule_trained_proxies", lambda s: int((~s).sum())))
    out["cited"] = [CITED[key] for key in out.index]
    return out.reset_index()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path, help="a clone of SubhadityaMukherjee/proxy_attention (bare or not)")
    args = parser.parse_args(argv)
    rows = cited_rows(args.repository)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(rows[SHOWN].to_string(index=False, float_format="{:.2f}".format))
        print()
        print(summary(rows).to_string(index=False, float_format="{:.2f}".format))


if __name__ == "__main__":
    main()
