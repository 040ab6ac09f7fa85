"""compute-CAMs: the exact one-pass fast path (cams.GapLinearCAM) against its anchor,
pytorch-grad-cam's GradCAM, with a forward pass alone as the ceiling; maps compared to float precision.
"""

from __future__ import annotations

import numpy as np
import torch

from measure import device, median_times

# 1. compute-CAMs ---------------------------------------------------------------------------


def bench_cams(models, sizes, batch: int, repeats: int) -> list[dict]:
    import pytorch_grad_cam as pgc
    import timm
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from proxyattention.models.build import is_vit, takes_image_size
    from proxyattention.models.cams import (
        GapLinearCAM,
        auto_target_layer,
        build_cam,
        compute_maps,
        fast_path_applies,
    )

    rows = []
    dev = device()
    for name in models:
        for size in sizes:
            torch.manual_seed(0)
            kwargs = {"img_size": size} if takes_image_size(name) else {}
            model = timm.create_model(name, num_classes=10, **kwargs).eval().to(dev)
            x = torch.randn(batch, 3, size, size, device=dev)
            classes = list(range(batch))
            classes = [c % 10 for c in classes]
            layer = auto_target_layer(model, size)
            targets = [ClassifierOutputTarget(c) for c in classes]

            def forward():
                with torch.inference_mode():
                    model(x)

            library = pgc.GradCAM(model=model, target_layers=[dict(model.named_modules())[layer]],
                                  **({"reshape_transform": build_cam(model, "gradcam", layer, size).reshape_transform}
                                     if is_vit(model) else {}))
            reference = library(input_tensor=x, targets=targets)
            fast = GapLinearCAM(model) if fast_path_applies(model, "gradcam", layer, size) else None
            runs = [lambda: library(input_tensor=x, targets=targets), forward]
            if fast is not None:
                runs.append(lambda: compute_maps(fast, model, x, classes))
            t_library, t_forward, *t_fast = median_times(runs, repeats)
            row = {"model": name, "size": size, "batch": batch, "method": "gradcam",
                   "library_img_s": batch / t_library, "forward_only_img_s": batch / t_forward}
            if fast is not None:
                maps = compute_maps(fast, model, x, classes)
                row.update({"fast_img_s": batch / t_fast[0], "fast_vs_library": t_library / t_fast[0],
                            "fast_vs_forward_only": t_forward / t_fast[0],
                            "max_abs_diff": float(np.abs(maps - reference).max())})
            library.__exit__(None, None, None)
            rows.append(row)
    return rows
