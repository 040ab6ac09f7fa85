"""Training step memory format: channels-last against its anchor, NCHW, on this device."""

from __future__ import annotations

import torch

from measure import median_times


def bench_channels_last(models, size: int, batch: int, repeats: int) -> list[dict]:
    """A training step on this device with the model and batch in NCHW vs channels-last memory
    (what training.channels_last chooses), same model, batch and optimiser."""
    import timm
    import torch.nn.functional as F

    from proxyattention.models.build import takes_image_size
    from proxyattention.runtime.device import select_runtime

    runtime = select_runtime("auto", True)
    rows = []
    for name in models:
        steps = []
        for channels_last in (False, True):
            torch.manual_seed(0)
            kwargs = {"img_size": size} if takes_image_size(name) else {}
            model = timm.create_model(name, num_classes=10, **kwargs).to(runtime.device).train()
            x = torch.randn(batch, 3, size, size, device=runtime.device)
            if channels_last:
                model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            y = torch.zeros(batch, dtype=torch.int64, device=runtime.device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def step(model=model, x=x, y=y, opt=opt):
                with runtime.autocast():
                    loss = F.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            steps.append(step)
        t_nchw, t_nhwc = median_times(steps, repeats)
        rows.append({"model": name, "size": size, "batch": batch, "device": str(runtime.device),
                     "threads": torch.get_num_threads(), "nchw_img_s": batch / t_nchw,
                     "channels_last_img_s": batch / t_nhwc, "ratio": t_nchw / t_nhwc})
    return rows
