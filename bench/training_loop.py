"""Training: the stage's epoch loop (training.loop.train_one_epoch) against its anchor, a bare
timm loop on the same in-memory tensors.
"""

from __future__ import annotations

import numpy as np
import torch

from measure import median_times

# 2. training ---------------------------------------------------------------------------------


def bench_training(model_name: str, size: int, batch: int, n_images: int, repeats: int) -> dict:
    """The stage's loop (DataLoader over uint8 arrays, augmentation, AMP on GPU) against a bare
    timm loop over float tensors already on the device: same model, batch, size, optimiser."""
    import timm
    import torch.nn.functional as F

    from proxyattention.data.batches import ArraySource, make_loader
    from proxyattention.runtime.device import select_runtime

    runtime = select_runtime("auto", True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n_images)
    source = ArraySource([(images, np.arange(n_images), labels)])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def fresh():
        torch.manual_seed(0)
        model = runtime.prepare_model(timm.create_model(model_name, num_classes=10)).train()
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    from proxyattention.training.loop import train_one_epoch

    model, opt = fresh()
    scaler = runtime.grad_scaler()
    constant = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    loader, sampler = make_loader(source, mean, std, batch, seed=0, train=True, hflip=True, crop_padding=4,
                                  pin_memory=runtime.device.type == "cuda", device=runtime.device,
                                  channels_last=runtime.channels_last)

    def stage_epoch():
        train_one_epoch(model, loader, opt, constant, scaler, runtime)

    bare_model, bare_opt = fresh()
    xs = [runtime.to_device(torch.randn(batch, 3, size, size)) for _ in range(n_images // batch)]
    ys = [torch.randint(0, 10, (batch,), device=runtime.device) for _ in xs]

    def bare_epoch():
        for x, y in zip(xs, ys):
            with runtime.autocast():
                loss = F.cross_entropy(bare_model(x).float(), y)
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()

    seen_stage = n_images - (n_images % batch if n_images % batch == 1 else 0)
    seen_bare = batch * len(xs)
    t_stage, t_bare = median_times([stage_epoch, bare_epoch], repeats)
    stage_ips, bare_ips = seen_stage / t_stage, seen_bare / t_bare
    return {"model": model_name, "size": size, "batch": batch, "device": str(runtime.device),
            "precision": runtime.precision, "stage_img_s": stage_ips, "bare_loop_img_s": bare_ips,
            "ratio": stage_ips / bare_ips}
