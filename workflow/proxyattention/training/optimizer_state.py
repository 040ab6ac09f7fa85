"""The optimizer's state beside a checkpoint (``optimizer.safetensors``), so the next cycle
continues one training run: AdamW's moments or SGD's momentum buffers, the optimizer's
hyperparameters, the schedule's position and the grad scaler's state.

Tensors are stored as ``state.<parameter index>.<name>``; the rest as JSON in the file's
metadata. safetensors holds no code, so loading it runs none.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..files.atomic import atomic_path


def save(path, optimizer, scaler, schedule) -> None:
    """Write the state of ``optimizer``, ``scaler`` and ``schedule`` (RunSchedule) atomically."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().to("cpu").contiguous()
    # One metadata entry: safetensors writes several in no fixed order, and the same state should
    # give the same bytes.
    metadata = {"optimizer_state": json.dumps({
        "param_groups": state["param_groups"],
        "scaler": scaler.state_dict(),
        "schedule": schedule.state_dict(),
        "n_params": sum(len(g["params"]) for g in state["param_groups"]),
    }, sort_keys=True)}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load(path, optimizer, scaler) -> dict:
    """Restore ``optimizer`` and ``scaler`` from ``path``; return the schedule's saved state.

    Raises ValueError naming the file when it belongs to a model with other parameters."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = json.loads(f.metadata()["optimizer_state"])
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    groups = metadata["param_groups"]
    ours = optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in ours]:
        raise ValueError(f"{path}: optimizer state of {metadata['n_params']} parameters, this model has "
                         f"{sum(len(g['params']) for g in ours)}; it belongs to another model")
    state: dict = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    if metadata["scaler"]:
        scaler.load_state_dict(metadata["scaler"])
    return metadata["schedule"]
