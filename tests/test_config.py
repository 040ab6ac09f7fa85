
import pytest
from conftest import DEMO, ROOT, shipped_configs

from proxyattention.settings.schema import ConfigError
from proxyattention.settings.stage_settings import epochs_for
from proxyattention.settings.validate import check_config, load_config, validate


def minimal():
    return {"datasets": {"d": {"source": "idx", "path": str(DEMO)}}, "models": {"m": {"timm_name": "resnet18"}}}


def test_defaults_come_from_the_schema():
    config = validate(minimal())
    assert config["datasets"]["d"]["image_size"] == 224
    assert config["proxy"]["threshold"] == {"mode": "quantile", "value": 0.9}
    assert config["proxy"]["fill"]["mode"] == "black"
    assert config["arms"] == {"baseline": {"kind": "baseline"}, "duplicate": {"kind": "duplicate", "matches": "proxy"},
                              "proxy": {"kind": "proxy"}, "random_erase": {"kind": "random_erase", "matches": "proxy"}}


@pytest.mark.parametrize("mutate, words", [
    (lambda c: c["datasets"]["d"].update(bogus=1), ["datasets.d", "'bogus' was unexpected", "allowed keys here"]),
    (lambda c: c["datasets"]["d"].update(source="zip"), ["datasets.d.source", "allowed: imagefolder, csv, idx"]),
    (lambda c: c["models"]["m"].update(batch_size="big"), ["models.m.batch_size", "not of type 'integer'"]),
    (lambda c: c.update(proxy={"threshold": {"value": 1.5}}), ["proxy.threshold.value"]),
    (lambda c: c.update(proxy={"threshold": {"value": 0}}), ["proxy.threshold.value"]),
    (lambda c: c.update(arms=["proxy", "magic"]), ["arms.1", "allowed: baseline, duplicate, proxy, random_erase"]),
    (lambda c: c.update(proxy={"cam_method": "gradcam3"}), ["proxy.cam_method", "allowed: gradcam"]),
])
def test_schema_rejects_with_one_readable_line(mutate, words):
    config = minimal()
    mutate(config)
    with pytest.raises(ConfigError) as err:
        validate(config)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("mutate, words", [
    (lambda c: c["datasets"]["d"].update(path="/no/such/folder"), ["datasets.d.path", "does not exist;"]),
    (lambda c: c["datasets"]["d"].update(path="no/such/folder"),
     ["datasets.d.path", "does not exist (a relative path is read from the folder the workflow runs in, /"]),
    (lambda c: c["models"]["m"].update(timm_name="resnet_eighteen"), ["models.m.timm_name", "resnet_eighteen"]),
    (lambda c: c["models"]["m"].update(weights="bundled"), ["models.m.weights", "tf_efficientnet_lite0"]),
    (lambda c: c["models"]["m"].update(weights="/no/weights.pth"), ["models.m.weights", "does not exist"]),
    (lambda c: c["models"]["m"].update(timm_name="vit_tiny_patch16_224", cam_method="fullgrad"), ["fullgrad", "ViT"]),
    (lambda c: c.update(training={"epochs": [1]}, cycles=3), ["training.epochs", "one entry per cycle"]),
])
def test_semantic_checks_name_the_key(mutate, words):
    config = minimal()
    mutate(config)
    validate(config)
    with pytest.raises(ConfigError) as err:
        check_config(config)
    for word in words:
        assert word in str(err.value)


def test_epoch_schedule_per_cycle():
    config = minimal()
    config["training"] = {"epochs_finetune": 5, "epochs": [9, 9, 9, 4]}
    config["cycles"] = 4
    validate(config)
    assert [epochs_for(config, c) for c in range(5)] == [5, 9, 9, 9, 4]


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_shipped_configs_validate(name, monkeypatch):
    """Every shipped config passes the schema and every check a run makes before its jobs (#22.8:
    only the demo's ran the checks); an overlay with the config it extends, as its command runs it."""
    monkeypatch.chdir(ROOT)
    config = load_config(*shipped_configs()[name])
    assert config["arms"] and config["datasets"]


def test_a_tilde_means_the_home_folder(tmp_path, monkeypatch):
    """#27.13: `results: "~/x"` made a folder literally named `~` in the working folder."""
    import os

    from conftest import make_config

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "weights.safetensors").write_bytes(b"")
    config = make_config(results="~/x")
    assert config["results"] == str(tmp_path / "x")
    demo = config["datasets"]["fm"]["path"]
    os.symlink(demo, tmp_path / "fm")
    config = make_config(datasets={"fm": {"source": "idx", "path": "~/fm", "image_size": 32}},
                         models={"lite0": {"timm_name": "tf_efficientnet_lite0", "weights": "~/weights.safetensors"}})
    assert config["datasets"]["fm"]["path"] == str(tmp_path / "fm")
    assert config["models"]["lite0"]["weights"] == str(tmp_path / "weights.safetensors")


def test_the_grid_line_counts_in_the_singular_when_there_is_one():
    """#42 (smaller): "1 cycles", "1 seed pairs" read as a machine's words."""
    from proxyattention.files.layout import describe_grid

    line = describe_grid({"datasets": {"a": {}}, "models": {"m": {}}, "arms": ["baseline"], "seeds": [0],
                          "cycles": 1, "results": "r"})
    assert "x 1 cycle = 1 arm-cycle after 1 shared finetune;" in line


def test_a_path_of_the_wrong_kind_for_its_source_is_refused_at_start_by_name(tmp_path):
    """#42.5: a CSV source pointing at a folder, an IDX source on an ImageFolder, an empty class
    folder and a CSV without its header passed the start checks and failed inside prepare (one with
    a raw IsADirectoryError). Now each stops the run before any job, naming the path and the fix;
    and `snakemake -n` says it (the check runs as the workflow starts)."""
    import subprocess

    import cv2
    import numpy as np
    import yaml
    from conftest import SNAKEMAKE

    tree = tmp_path / "pets"
    for name in ("cat", "dog"):
        (tree / name).mkdir(parents=True)
    cv2.imwrite(str(tree / "cat" / "1.png"), np.zeros((8, 8, 3), np.uint8))  # dog/ is empty
    (tmp_path / "listing.csv").write_text("file,class\n1.png,cat\n")
    cases = [
        ({"source": "csv", "path": str(tree)}, ["datasets.d.path", "is a folder; a csv source is a CSV file",
                                                "use source: imagefolder"]),
        ({"source": "idx", "path": str(tree)}, ["holds no train-images-idx3-ubyte", "use source: imagefolder"]),
        ({"source": "imagefolder", "path": str(tree)}, ["empty class folder(s)", str(tree / "dog"),
                                                        "add images or remove the folder"]),
        ({"source": "imagefolder", "path": str(DEMO)}, ["no class folders", "use source: idx"]),
        ({"source": "csv", "path": str(tmp_path / "listing.csv")}, ["no column(s) label, path", "it has: file, class"]),
        ({"source": "imagefolder", "path": str(tmp_path / "listing.csv")}, ["is a file", "use source: csv"]),
    ]
    for spec, words in cases:
        config = minimal()
        config["datasets"]["d"] = spec
        validate(config)
        with pytest.raises(ConfigError) as err:
            check_config(config)
        for word in words:
            assert word in str(err.value), (spec, str(err.value))
    (tree / "dog" / "2.png").write_bytes((tree / "cat" / "1.png").read_bytes())
    config = minimal()
    config["datasets"]["d"] = {"source": "imagefolder", "path": str(tree)}
    check_config(validate(config))  # every class has an image: accepted
    (tree / "dog" / "2.png").unlink()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({**minimal(), "datasets": {"d": {"source": "imagefolder",
                                                                                   "path": str(tree)}}}))
    proc = subprocess.run(SNAKEMAKE + ["-n", "--directory", str(run), "--configfile", str(run / "config.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "empty class folder(s)" in proc.stdout + proc.stderr
    assert not (run / "results").exists()


def test_the_readme_imagefolder_config_is_a_whole_config_that_passes_the_start_checks(tmp_path):
    """#42 (smaller): README had no ImageFolder example. Its block, with the path pointed at a real
    tree of scikit-learn digits, passes the schema and every start check as written."""
    import re

    import cv2
    import numpy as np
    import yaml
    from sklearn.datasets import load_digits

    block = re.search(r"```yaml\n(results: results_pets\n.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    config = yaml.safe_load(block)
    digits = load_digits()
    for split in ("train", "val"):
        for c in range(3):
            folder = tmp_path / "pets" / split / f"digit{c}"
            folder.mkdir(parents=True)
            for k in np.flatnonzero(digits.target == c)[:2]:
                cv2.imwrite(str(folder / f"{k}.jpg"), (digits.images[k] * 15).astype(np.uint8))
    assert config["datasets"]["pets"]["path"] == "/data/pets"
    config["datasets"]["pets"]["path"] = str(tmp_path / "pets")
    config["models"]["resnet18"]["weights"] = "none"  # hub needs the network, checked when a run starts
    check_config(validate(config))
    assert len(config["seeds"]) >= 3
