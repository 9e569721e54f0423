"""Pretrained weight files on disk, adapted to the run: another head size, other input channels.

``student.pretrained_file`` / ``teacher.pretrained_file`` name a state_dict (torch or
safetensors; torchvision, timm or gpd layout, a ``module.`` prefix from DDP stripped).
Unlike ``*.checkpoint`` (a strict load of a model trained for this data), the file may
come from another task:

* the classifier (``get_classifier()``, or an ``fc`` / ``classifier`` / ``head`` Linear)
  is kept at its fresh initialisation when its size differs (1000 ImageNet classes
  against the data set's 10);
* the layer that reads the image gets its kernel adapted to the data's channels by
  timm's ``adapt_input_conv`` (summed to 1 channel, tiled and rescaled to more);
* any other difference (a missing tensor, another shape) means the file belongs to
  another architecture: a one-line error naming the first tensors that differ.

What was loaded, adapted and re-initialised is reported in one line.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gpd.distill.features import classifier_name
from gpd.errors import CheckpointError, first_line
from gpd.io.student import read_checkpoint, state_dict_of


def read_state_dict(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a weight file (torch or safetensors), ``module.`` prefixes removed."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"{key} {path} does not exist (give a state_dict or safetensors file)")
        from safetensors.torch import load_file

        try:
            state: dict[str, torch.Tensor] | None = load_file(str(path))
        except Exception as err:
            raise CheckpointError(f"cannot read {key} {path}: {first_line(err)}") from None
    else:
        path, payload = read_checkpoint(path, key)
        state = state_dict_of(payload)
    if not state:
        raise CheckpointError(f"{key} {path} holds no state_dict (a torch or safetensors file of tensors)")
    return {name.removeprefix("module."): tensor for name, tensor in state.items()}


def _first_conv_name(model: nn.Module) -> str | None:
    return next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def load_pretrained_file(model: nn.Module, path: str | Path, key: str) -> str:
    """Load ``path`` into ``model``, adapting the head and the input channels; returns the report line."""
    from timm.models import adapt_input_conv

    state = read_state_dict(path, key)
    own = model.state_dict()
    head = classifier_name(model)
    head_keys = {f"{head}.weight", f"{head}.bias"} if head else set()
    stem = _first_conv_name(model)
    stem_key = f"{stem}.weight" if stem else None
    loaded: dict[str, torch.Tensor] = {}
    adapted, reinitialised, problems = [], [], []
    for name, tensor in own.items():
        if name not in state:
            if name in head_keys:
                reinitialised.append(name)
            elif not name.endswith("num_batches_tracked"):
                problems.append(f"{name} missing")
            continue
        value = state[name]
        if value.shape == tensor.shape:
            loaded[name] = value
        elif name in head_keys:
            reinitialised.append(f"{name} {tuple(value.shape)} -> {tuple(tensor.shape)}")
        elif (
            name == stem_key
            and value.ndim == 4
            and value.shape[0] == tensor.shape[0]
            and value.shape[2:] == tensor.shape[2:]
        ):
            loaded[name] = adapt_input_conv(tensor.shape[1], value.float()).to(tensor.dtype)
            adapted.append(f"{name} ({value.shape[1]} -> {tensor.shape[1]} input channels, timm adapt_input_conv)")
        else:
            problems.append(f"{name} {tuple(value.shape)} vs {tuple(tensor.shape)}")
    unexpected = sorted(set(state) - set(own))
    if problems or unexpected:
        detail = ", ".join(problems[:3] + [f"{n} unexpected" for n in unexpected[:3]])
        more = len(problems) + len(unexpected) - min(len(problems), 3) - min(len(unexpected), 3)
        target = (getattr(model, "gpd_spec", None) or {}).get("name", type(model).__name__)
        raise CheckpointError(
            f"{key} {path} does not belong to {target}: {detail}{f' and {more} more' if more > 0 else ''}; "
            f"give the weights of this architecture (the head and the input channels may differ)"
        )
    model.load_state_dict(loaded, strict=False)
    line = f"{key}: loaded {len(loaded)} of {len(own)} tensors from {path}"
    if adapted:
        line += f"; adapted {', '.join(adapted)}"
    if reinitialised:
        line += f"; re-initialised the classifier {', '.join(reinitialised)}"
    return line
