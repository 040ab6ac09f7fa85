"""A study's files for the repository (proxyattention.study_files): per-image results packed into
one file and unpacked again (what the verdicts read comes back exactly), every epoch in one table."""

import numpy as np
import pandas as pd
import pytest

from conftest import run_dir


def test_packing_a_tiny_run_keeps_every_prediction_and_the_probabilities_to_float16(tiny_run, tmp_path):
    from proxyattention.study_files import pack, unpack

    summary = tiny_run / "results" / "summary.csv"
    made = pack(summary, tmp_path / "per_image.npz")
    frame = pd.read_csv(summary)
    assert made["cells"] == len(frame) == 2 * (1 + 3 * 2)  # 2 seeds x (finetune + 3 arms x 2 cycles)
    back = unpack(tmp_path / "per_image.npz", tmp_path / "unpacked")
    assert len(back) == made["cells"]
    for (dataset, model, seed, arm, cycle), path in back.items():
        with np.load(run_dir(tiny_run, arm, seed, cycle) / "per_image.npz") as original, np.load(path) as copy:
            assert sorted(original.files) == sorted(copy.files)
            for key in original.files:
                a, b = original[key], copy[key]
                assert a.dtype == b.dtype and a.shape == b.shape, key
                if key.endswith(("_p_true", "_p_top")):
                    assert np.allclose(a, b, rtol=2 ** -10, atol=0), key  # float16's 11-bit significand
                else:
                    assert np.array_equal(a, b), key
    # the rows and labels are stored once per dataset, not once per cell
    with np.load(tmp_path / "per_image.npz") as packed:
        assert sum(k.endswith("_index") for k in packed.files) == sum(k.endswith("_label") for k in packed.files)
        assert sum(k.endswith("_index") for k in packed.files) <= 2  # val and test at most


def test_a_missing_per_image_file_is_named(tiny_run, tmp_path):
    from proxyattention.study_files import pack

    frame = pd.read_csv(tiny_run / "results" / "summary.csv")
    frame.loc[len(frame)] = frame.iloc[-1]
    frame.loc[len(frame) - 1, "seed"] = 9
    frame.to_csv(tmp_path / "summary.csv", index=False)
    with pytest.raises(FileNotFoundError, match="seed9/.*per_image.npz"):
        pack(tmp_path / "summary.csv", tmp_path / "per_image.npz", results=tiny_run / "results")
    assert not (tmp_path / "per_image.npz").exists()


def test_the_epochs_of_every_training_job_come_in_one_table(tiny_run, tmp_path):
    from proxyattention.study_files import epochs

    summary = tiny_run / "results" / "summary.csv"
    rows = epochs(summary, tmp_path / "epochs.csv")
    table = pd.read_csv(tmp_path / "epochs.csv")
    assert rows == len(table)
    for (arm, seed, cycle), part in table.groupby(["arm", "seed", "cycle"]):
        original = pd.read_csv(run_dir(tiny_run, arm, seed, cycle) / "epochs.csv")
        pd.testing.assert_frame_equal(part.drop(columns=["dataset", "model", "arm", "seed", "cycle"])
                                      .reset_index(drop=True), original)
    assert len(table.groupby(["arm", "seed", "cycle"])) == len(pd.read_csv(summary))
