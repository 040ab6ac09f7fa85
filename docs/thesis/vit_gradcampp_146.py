# Run in a throwaway environment, never in the project's (whose grad-cam floor is 1.5.4):
#   pip download --no-deps grad-cam==1.4.6 -d /tmp/gc && pip install --no-deps --target /tmp/gc146 /tmp/gc/grad-cam-1.4.6.tar.gz
#   PYTHONPATH=/tmp/gc146 python docs/thesis/vit_gradcampp_146.py
"""What the thesis's ViT proxy step did: grad-cam 1.4.6's GradCAM++ on timm's ViT-B/16 at the
thesis's target layer (blocks[-1].norm1, meta_utils.py 538-540), called as training.py 141-142
and 323-325 call it, with the thesis's two except clauses (training.py 219-220, 233-234)."""
import numpy as np
import pytorch_grad_cam
import timm
import torch
from pytorch_grad_cam import GradCAMPlusPlus

import importlib.metadata as md
print("grad-cam", md.version("grad-cam"), "timm", timm.__version__, "torch", torch.__version__)
torch.manual_seed(0)
model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100).eval()
layer = model.blocks[-1].norm1
x = torch.randn(2, 3, 224, 224)
shapes = []
hook = layer.register_forward_hook(lambda module, inputs, output: shapes.append(tuple(output.shape)))
with torch.no_grad():
    model(x)
hook.remove()
print("target layer output in a forward:", shapes[0])
cam = GradCAMPlusPlus(model=model, target_layers=[layer], use_cuda=False)  # the thesis passes use_cuda=True
processed = []
try:
    try:
        grads = cam(input_tensor=x, targets=None)
        processed.append(grads)
    except ValueError as error:  # training.py 219-220: `except ValueError: pass`
        print("proxy_one_batch raised", type(error).__module__ + "." + type(error).__name__, "-", error)
        print("  is a ValueError:", isinstance(error, ValueError), "-> swallowed by training.py 219-220")
    stacked = torch.stack(processed, dim=0)  # training.py 223
except RuntimeError as error:  # training.py 233-234: `except RuntimeError: pass`
    print("torch.stack raised RuntimeError -", error, "-> swallowed by training.py 233-234")
print("proxy images made:", len(processed))
