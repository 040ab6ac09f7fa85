"""GPU: a training step in the precision ``auto`` picks against its anchor, fp32 (time, peak memory)."""

from __future__ import annotations

import torch

from measure import median_time

# 6. GPU precision ------------------------------------------------------------------------------


def bench_precision(models, size: int, batch: int, repeats: int) -> list[dict]:
    """On a GPU: a training step in fp32 and in the precision ``auto`` picks for it (bf16 with
    native bf16, else fp16 with the grad scaler), images/s and peak memory."""
    if not torch.cuda.is_available():
        return []
    import timm

    from proxyattention.models.build import takes_image_size
    from proxyattention.runtime.device import resolve_precision, select_runtime
    from proxyattention.training.loop import train_one_epoch

    dev = torch.device("cuda", torch.cuda.current_device())
    rows = []
    for name in models:
        for precision in ("fp32", resolve_precision("auto", dev)):
            rt = select_runtime(precision, True, str(dev))  # as a stage builds it: cudnn.benchmark, IEEE fp32
            torch.manual_seed(0)
            kwargs = {"img_size": size} if takes_image_size(name) else {}
            model = rt.prepare_model(timm.create_model(name, num_classes=10, **kwargs)).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            constant = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
            scaler = rt.grad_scaler()
            batches = [(torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last),
                        torch.randint(0, 10, (batch,), device=dev)) for _ in range(4)]

            def step():
                train_one_epoch(model, batches, opt, constant, scaler, rt)

            step()
            torch.cuda.reset_peak_memory_stats()
            t = median_time(step, repeats)
            rows.append({"model": name, "precision": precision, "tf32_convolutions": torch.backends.cudnn.allow_tf32,
                         "gpu": torch.cuda.get_device_name(dev),
                         "batch": batch, "size": size, "img_s": 4 * batch / t,
                         "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20})
            del model, opt, batches
            torch.cuda.empty_cache()
    return rows
