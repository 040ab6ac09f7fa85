"""GPU-ready by construction, tested on the CPU where the logic does not depend on the device:
the device-side data path equals the numpy reference bit for bit, training never waits for the
device each step, precision and determinism resolve from the job's own device."""

import os

import numpy as np
import pytest
import torch

from proxyattention.data import batches as data
from proxyattention.data.batches import ArraySource, augment, make_loader, normalise
from proxyattention.runtime.device import Runtime, resolve_precision
from proxyattention.training.loop import NonFiniteLossError, train_one_epoch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def demo_source(prepared, n=203):
    images = np.load(prepared["images"], mmap_mode="r")
    return ArraySource([(images, np.arange(n), np.arange(n) % 10)])


def reference_batches(source, batch, seed, epoch, hflip, padding, train=True):
    """Today's path before the device transform: gather, augment and normalise in numpy."""
    sampler = data.EpochBatches(len(source), batch, seed, shuffle=train,
                                drop_last=train and len(source) % batch == 1)
    sampler.set_epoch(epoch)
    plan = data.epoch_plan(seed, epoch, len(source), source.n_original, hflip, padding)
    for e, b, indices in sampler:
        images, labels = source.gather(indices)
        if train:
            images = augment(images, plan[indices], padding)
        yield normalise(images, MEAN, STD), torch.from_numpy(labels)


@pytest.mark.parametrize("hflip,padding,channels_last", [(True, 4, False), (True, 4, True), (False, 0, False),
                                                         (True, 0, True), (False, 3, False)])
def test_device_transform_equals_the_numpy_reference_bit_for_bit(prepared, hflip, padding, channels_last):
    source = demo_source(prepared)
    loader, sampler = make_loader(source, MEAN, STD, 32, seed=(3, 1), train=True, hflip=hflip,
                                  crop_padding=padding, channels_last=channels_last)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        got = list(loader)
        want = list(reference_batches(source, 32, (3, 1), epoch, hflip, padding))
        assert len(got) == len(want) == 7
        for (x, y), (rx, ry) in zip(got, want):
            assert x.dtype == torch.float32 and torch.equal(x, rx) and torch.equal(y, ry)
            assert x.is_contiguous(memory_format=torch.channels_last) == channels_last or x.shape[1] == 1


def test_evaluation_batches_are_unaugmented_and_equal_the_reference(prepared):
    source = demo_source(prepared, 70)
    loader, _ = make_loader(source, MEAN, STD, 32, train=False, crop_padding=4, hflip=True)
    got, want = list(loader), list(reference_batches(source, 32, 0, 0, True, 4, train=False))
    assert len(got) == len(want) == 3  # zip over an empty loader would pass anything
    for (x, y), (rx, ry) in zip(got, want):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    # unaugmented: the rows in order, only normalised
    np.testing.assert_array_equal(torch.cat([x for x, _ in got]).numpy(),
                                  normalise(source.gather(np.arange(70))[0], MEAN, STD).numpy())


def test_threads_gather_uint8_and_the_batches_do_not_depend_on_their_number(prepared):
    source = demo_source(prepared, 100)
    dataset = data.BatchDataset(source, 5, train=True, hflip=True, crop_padding=4)
    images, labels, plan = dataset[(0, 0, np.arange(10))]
    assert images.dtype == torch.uint8 and images.shape == (10, 32, 32, 3) and plan.shape == (10, 3)
    runs = []
    for workers in (0, 2):
        loader, sampler = make_loader(source, MEAN, STD, 25, seed=5, train=True, hflip=True, crop_padding=4,
                                      num_workers=workers)
        sampler.set_epoch(1)
        runs.append(list(loader))
    assert len(runs[0]) == len(runs[1]) == 4
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*runs))


class Counter:
    """Counts the host's reads of device values (each one a sync on a GPU) during a block."""

    def __init__(self, monkeypatch):
        self.calls = 0
        for name in ("item", "tolist", "__bool__", "cpu", "numpy"):
            real = getattr(torch.Tensor, name)

            def counted(self_, *args, _real=real, **kwargs):
                self.calls += 1
                return _real(self_, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


def test_the_device_side_of_the_data_path_reads_nothing_back(prepared, monkeypatch):
    source = demo_source(prepared, 100)
    for padding in (0, 4):
        loader, sampler = make_loader(source, MEAN, STD, 25, seed=1, train=True, hflip=True, crop_padding=padding,
                                      channels_last=True)
        counter = Counter(monkeypatch)
        batches = list(loader)
        monkeypatch.undo()
        assert len(batches) == 4 and counter.calls == 0, counter.calls


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))


def batches(n, poison_at=None):
    g = torch.Generator().manual_seed(0)
    for step in range(n):
        x = torch.randn(8, 3, 4, 4, generator=g)
        if step == poison_at:
            x[0, 0, 0, 0] = float("nan")
        yield x, torch.randint(0, 10, (8,), generator=g)


def one_epoch(model, steps, poison_at=None, epoch=0):
    runtime = Runtime(torch.device("cpu"), "fp32", False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return train_one_epoch(model, batches(steps, poison_at), optimizer, scheduler, runtime.grad_scaler(), runtime,
                           epoch, "m", 8)


def test_training_reads_the_device_once_per_hundred_steps_not_each_step(monkeypatch):
    model = tiny_model()
    counter = Counter(monkeypatch)
    loss, correct, seen = one_epoch(model, 250)
    monkeypatch.undo()
    assert seen == 2000 and 0 <= correct <= 2000 and loss > 0
    # 2 finiteness looks (steps 100, 200) + 1 at the end + the two totals: 5, not 250+
    assert counter.calls <= 6, counter.calls


@pytest.mark.parametrize("poison_at", [0, 37, 149])
def test_a_non_finite_loss_is_reported_at_its_own_step(poison_at):
    with pytest.raises(NonFiniteLossError, match=rf"loss is nan at epoch 3, batch {poison_at + 1} "):
        one_epoch(tiny_model(), 160, poison_at, epoch=2)


class FakeCuda:
    def __init__(self, capability):
        self.capability = capability

    def get_device_capability(self, device=None):
        return self.capability


@pytest.mark.parametrize("capability,auto", [((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16"), ((6, 1), "fp16")])
def test_auto_precision_is_bf16_only_with_native_bf16(monkeypatch, capability, auto):
    """T4 (7.5) and P100 (6.x) emulate bf16, slowly: auto picks fp16 with the grad scaler there,
    whatever torch.cuda.is_bf16_supported() says; A100 (8.0) and H100 (9.0) get bf16."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", FakeCuda(capability).get_device_capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = torch.device("cuda", 0)
    assert resolve_precision("auto", cuda) == auto
    assert resolve_precision("fp32", cuda) == "fp32" and resolve_precision("bf16", cuda) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == resolve_precision("bf16", torch.device("cpu")) == "fp32"
    assert Runtime(cuda, auto, True).amp_dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[auto]


def test_deterministic_sets_what_torch_needs_to_repeat_on_a_gpu(monkeypatch):
    """torch's reproducibility notes: cudnn.benchmark off, deterministic algorithms, and the cuBLAS
    workspace variable; without the setting a GPU picks the fastest kernels."""
    from conftest import make_config

    from proxyattention.runtime.device import set_determinism
    from proxyattention.settings.stage_settings import stage_settings

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cuda = torch.device("cuda", 0)
    try:
        set_determinism(cuda, True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
        set_determinism(cuda, False)
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    finally:
        set_determinism(torch.device("cpu"), False)
        torch.backends.cudnn.benchmark = torch.backends.cudnn.deterministic = False
    assert torch.are_deterministic_algorithms_enabled()  # the CPU always (warn only)
    config = make_config(training={"deterministic": True})
    for stage in ("train", "find_misclassified", "evaluate"):  # a changed setting reruns these stages
        assert stage_settings(config, "fm", "lite0", 1, stage)["training"]["deterministic"] is True


def test_compute_cams_follows_the_deterministic_setting(monkeypatch, prepared, tmp_path):
    """#27.14: compute_cams built its runtime with deterministic=False whatever the config (so
    cudnn.benchmark on, and maps cut at a per-map quantile could change between GPU runs); the
    setting now reaches it and is part of its settings (a change reruns it)."""
    from conftest import make_config

    from proxyattention.settings.stage_settings import stage_settings
    from proxyattention.stages import compute_cams as cc

    config = make_config(training={"deterministic": True})
    settings = stage_settings(config, "fm", "lite0", 1, "compute_cams")
    assert settings["training"]["deterministic"] is True
    (tmp_path / "selected.csv").write_text("index,label,prediction\n")

    class Built(Exception):
        pass

    def spy(precision, channels_last, device=None, deterministic=False):
        raise Built(precision, deterministic)

    monkeypatch.setattr(cc, "select_runtime", spy)
    with pytest.raises(Built) as built:
        cc.compute_cams(settings, prepared["images"], prepared["index"], "w", "m", tmp_path / "selected.csv",
                        tmp_path / "cams.npz", tmp_path / "cams.csv")
    assert built.value.args == ("fp32", True)


def test_fp32_on_a_gpu_is_full_fp32_not_tf32():
    """#27.16: with precision fp32, Ampere and newer ran convolutions in TF32 by default
    (torch.backends.cudnn.allow_tf32 is True); fp32 now means IEEE fp32 for convolutions and
    matrix products, and the mixed precisions leave TF32 to torch's defaults."""
    from proxyattention.runtime.device import set_fp32_precision

    cuda = torch.device("cuda", 0)
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        set_fp32_precision(cuda, "fp32")
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        set_fp32_precision(cuda, "bf16")
        assert torch.backends.cudnn.allow_tf32  # torch's default for the rest of a mixed-precision run
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_gpus_that_torch_cannot_see_are_reported_not_silently_ignored(monkeypatch, prepared, tmp_path, caplog):
    """#27.17: a gpu=1 job on a machine whose torch cannot see its GPUs (a CPU wheel, a driver
    mismatch) trained on the CPU without a word; now the log and train_stats.json say so."""
    import json
    import logging

    from conftest import make_config

    from proxyattention.runtime.device import select_runtime
    from proxyattention.settings.stage_settings import stage_settings
    from proxyattention.stages.train import train

    monkeypatch.setenv("PA_LOCAL_GPUS", "2")  # what nvidia-smi would list
    assert not torch.cuda.is_available()
    with caplog.at_level(logging.WARNING, logger="proxyattention.runtime.device"):
        runtime = select_runtime("auto", True)
    assert runtime.device.type == "cpu" and "2 GPU(s)" in runtime.warning and "CUDA" in caplog.text
    config = make_config()
    folder = tmp_path / "run"
    train(stage_settings(config, "fm", "lite0", 0), prepared["images"], prepared["index"], prepared["classes"],
          *[folder / n for n in ("model.safetensors", "model.json", "epochs.csv", "train_stats.json")], seed=0)
    assert "2 GPU(s)" in json.loads((folder / "train_stats.json").read_text())["device_warning"]
    monkeypatch.setenv("PA_LOCAL_GPUS", "0")
    assert select_runtime("auto", True).warning is None
    assert select_runtime("auto", True, "cpu").warning is None  # asked for the CPU: nothing to say


@pytest.mark.parametrize("size", [16, 112])  # 768 B per image: fancy index per part; 37 KiB: row by row
def test_gather_returns_each_parts_rows_in_the_asked_order_whatever_the_mix(size):
    rng = np.random.default_rng(5)
    original = rng.integers(0, 256, (40, size, size, 3), dtype=np.uint8)
    added = rng.integers(0, 256, (9, size, size, 3), dtype=np.uint8)
    assert (original[0].nbytes >= data.ROW_BY_ROW_BYTES) == (size == 112)
    rows_o, rows_a = rng.permutation(40)[:30], np.array([8, 0, 3, 3, 5])  # a row may come twice
    source = ArraySource([(original, rows_o, np.arange(30) % 7), (added, rows_a, np.arange(5) + 100)])
    every = np.concatenate([original[rows_o], added[rows_a]])
    every_label = np.concatenate([np.arange(30) % 7, np.arange(5) + 100])
    for indices in (rng.permutation(35)[:17], np.arange(30)[::-1], np.array([31, 34, 33]), np.array([32, 2, 32]),
                    np.array([], dtype=np.int64)):
        images, labels = source.gather(indices)
        assert images.shape == (len(indices), size, size, 3) and type(images) is np.ndarray
        np.testing.assert_array_equal(images, every[indices])
        np.testing.assert_array_equal(labels, every_label[indices])
