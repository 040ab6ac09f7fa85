"""Device, precision and memory accounting, handled in one place for every stage."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import resource
import sys
from dataclasses import dataclass

import torch

from .warm import in_warm_child

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32, bf16 or fp16
    channels_last: bool
    warning: str | None = None  # e.g. GPUs this torch cannot see

    @property
    def amp_dtype(self):
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self):
        """Autocast context for the forward pass (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self):
        """A GradScaler for fp16; disabled (a pass-through) otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: CUDA compute capability 8 (Ampere) or more.
    ``torch.cuda.is_bf16_supported()`` also says yes on older GPUs that only emulate it, slowly."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on a GPU with native bf16, else fp16 (with a grad scaler) on a GPU, fp32
    on the CPU. An explicit choice is kept on a GPU; the CPU always runs fp32."""
    if device.type != "cuda":
        return "fp32"
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp16"
    return precision


def set_determinism(device: torch.device, deterministic: bool) -> None:
    """Deterministic algorithms always on the CPU (they cost nothing there); on a GPU only with
    ``deterministic`` (then cudnn.benchmark off and the cuBLAS workspace that cuBLAS needs to
    repeat, see torch's "Reproducibility" notes), else cudnn.benchmark picks the fastest kernels."""
    if device.type == "cuda":
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.use_deterministic_algorithms(deterministic)
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)


def select_runtime(precision: str = "auto", channels_last: bool = True, device: str | None = None,
                   deterministic: bool = False) -> Runtime:
    """The runtime for this process: CUDA when available (or ``device``), else the CPU.

    Precision as :func:`resolve_precision`, on the job's own device (the GPU this job was
    pinned to, not GPU 0); ``deterministic`` as :func:`set_determinism`. ``channels_last``
    applies on both: tensor cores want it on a GPU, and on this project's CPU it made a
    training step 1.73x faster for tf_efficientnet_lite0 at 64 px, 1.10-1.14x for resnet18,
    resnet50 and vit_tiny (bench/run.py, "channels_last").
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    set_determinism(dev, deterministic)
    resolved = resolve_precision(precision, dev)
    set_fp32_precision(dev, resolved)
    warning = unseen_gpus() if device is None and dev.type == "cpu" else None
    if warning:
        log.warning("%s", warning)
    return Runtime(dev, resolved, channels_last, warning)


def unseen_gpus() -> str | None:
    """What to say when this machine has GPUs (nvidia-smi lists them, or $PA_LOCAL_GPUS says so) but
    this torch cannot use them: the job then runs on the CPU, many times slower."""
    from .scripting import local_gpu_count

    count = local_gpu_count()
    if count == 0 or torch.cuda.is_available():
        return None
    build = "a CPU-only build" if not torch.backends.cuda.is_built() else "a CUDA build that finds no usable GPU"
    return (f"this machine has {count} GPU(s) but torch {torch.__version__} ({build}: driver or CUDA version "
            "mismatch?) cannot use them: running on the CPU")


def set_fp32_precision(device: torch.device, precision: str) -> None:
    """``fp32`` on a GPU means IEEE fp32: torch runs convolutions in TF32 on Ampere and newer by
    default (``torch.backends.cudnn.allow_tf32``), 10 mantissa bits where fp32 has 23. The mixed
    precisions keep torch's defaults for what runs in fp32 beside them."""
    if device.type != "cuda":
        return
    full = precision == "fp32"
    torch.backends.cudnn.allow_tf32 = not full
    torch.backends.cuda.matmul.allow_tf32 = False  # torch's default since 1.12; fp32 matrix products stay fp32


def reset_peak_memory(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)


def peak_memory(runtime: Runtime) -> dict:
    """Peak GPU memory allocated by tensors (CUDA) or the process's peak RSS (CPU), in MiB.

    A warm-start child's RSS leaves out the library pages its server loaded that it never
    touched, so its CPU figure is smaller than a cold process's; the kind says which it is.
    """
    if runtime.device.type == "cuda":
        return {"peak_memory_mib": torch.cuda.max_memory_allocated(runtime.device) / 2**20, "peak_memory_kind": "cuda_max_allocated"}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    kind = "cpu_peak_rss_warm_fork" if in_warm_child() else "cpu_peak_rss"
    return {"peak_memory_mib": rss_kib / 1024, "peak_memory_kind": kind}


def versions() -> dict:
    import numpy
    import timm

    from ..files.provenance import code_commit

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "timm": timm.__version__,
           "numpy": numpy.__version__, "platform": platform.platform(), "commit": code_commit()}
    from importlib.metadata import PackageNotFoundError, version

    try:  # from the installed metadata: importing the library would cost a training job ~3 s
        out["grad_cam"] = version("grad-cam")
    except PackageNotFoundError:
        pass
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
        out["gpu"] = torch.cuda.get_device_name()
    return out


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
