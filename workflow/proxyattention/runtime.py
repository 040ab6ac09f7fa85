"""Device, precision and memory accounting, handled in one place for every stage."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
from dataclasses import dataclass

import torch

from .warm import in_warm_child


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32, bf16 or fp16
    channels_last: bool

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


def select_runtime(precision: str = "auto", channels_last: bool = True, device: str | None = None) -> Runtime:
    """The runtime for this process: CUDA when available (or ``device``), else the CPU.

    ``auto`` precision is bf16 on GPUs that support it, else fp16 with a grad
    scaler; on the CPU always fp32. channels_last is used on CUDA only, where it
    speeds up convolutions with tensor cores.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return Runtime(dev, precision, channels_last)
    return Runtime(dev, "fp32", False)


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

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "timm": timm.__version__,
           "numpy": numpy.__version__, "platform": platform.platform()}
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
