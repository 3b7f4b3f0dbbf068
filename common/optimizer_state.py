"""AdamW state as safetensors + JSON, keyed by parameter name (never pickled).

The warm-up saves the student's optimizer state with this; influence scoring
restores it so that every candidate's step uses exactly the warm-up's moments,
step count and learning rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from common.errors import FailedPrecondition, NotFound

STATE_FILE = "optimizer.safetensors"
GROUPS_FILE = "optimizer.json"
_MOMENTS = ("exp_avg", "exp_avg_sq", "step")


def save_adamw_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, folder: Path) -> None:
    """Write ``optimizer``'s per-parameter moments and its param groups, by parameter name."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors: dict[str, torch.Tensor] = {}
    groups = []
    for group in optimizer.param_groups:
        settings = {
            k: v
            for k, v in group.items()
            if k != "params" and isinstance(v, (int, float, bool, str, list, tuple, type(None)))
        }
        groups.append({"params": [names[id(p)] for p in group["params"]], **settings})
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if key in _MOMENTS:
                    tensors[f"{names[id(param)]}::{key}"] = value.detach().to("cpu").contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / STATE_FILE))
    (folder / GROUPS_FILE).write_text(json.dumps({"type": "AdamW", "param_groups": groups}, indent=2))


def load_adamw(model: torch.nn.Module, folder: Path) -> torch.optim.AdamW:
    """An AdamW over ``model``'s parameters holding the state saved in ``folder``."""
    if not (folder / STATE_FILE).is_file() or not (folder / GROUPS_FILE).is_file():
        raise NotFound(f"no optimizer state ({STATE_FILE}, {GROUPS_FILE}) in {folder}", field="warmup")
    saved = json.loads((folder / GROUPS_FILE).read_text())
    params = dict(model.named_parameters())
    groups = []
    for group in saved["param_groups"]:
        missing = [n for n in group["params"] if n not in params]
        if missing:
            raise FailedPrecondition(f"optimizer state names unknown parameter {missing[0]!r}", field="warmup")
        groups.append(
            {
                **{k: v for k, v in group.items() if k in ("lr", "betas", "eps", "weight_decay", "amsgrad")},
                "params": [params[n] for n in group["params"]],
            }
        )
    # foreach=False: the plain per-parameter update, deterministic and the same on every backend.
    optimizer = torch.optim.AdamW(groups, foreach=False, fused=False)
    tensors = load_file(str(folder / STATE_FILE))
    for name, param in params.items():
        state = {key: tensors[f"{name}::{key}"].clone() for key in _MOMENTS if f"{name}::{key}" in tensors}
        if state:
            optimizer.state[param] = state
    return optimizer
