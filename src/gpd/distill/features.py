"""Multi-stage features taken with forward hooks, for feature-based KD (ReviewKD).

Models are never edited: the features are read by hooks registered for the length of
one forward pass (so copies and exports of a model never carry them). A stage that
returns tokens and their grid size, ``((B, N, C), (H, W))`` as RVT's stages do, gives the
(B, C, H, W) map of those tokens.

What is tapped (the ReviewKD paper's code and mdistiller's ReviewKD):

- ``preact=True``: each stage's *pre-activation* output, the value just before the
  stage's final activation (for a residual stage, ``x + F(x)`` before the last ReLU).
  It is found without knowing the model's code: every activation module inside the
  stage (``nn.ReLU``, ``nn.GELU``, ...) is watched, and when the stage's output is the
  very tensor that the last activation returned, the tap is that activation's input
  (copied first when the activation works in place). If the stage does not end in an
  activation module (a pre-activation ResNet such as WRN, whose stages end in the
  residual sum, or a model that calls ``F.relu`` directly), the stage's output itself is
  the tap. This covers gpd's CIFAR ResNets (``relu2`` of the last block), MobileNetV1
  (the last ``nn.ReLU`` of each stage's ``Sequential``), torchvision ResNets (the block's
  ``relu``, called once more after the residual add) and timm ResNets (``act2`` /
  ``act3``).
- ``preact=False``: each stage's output (after its final activation).
- ``pooled=True`` adds one more level after the stages: the pooled feature the
  classifier sees (the input of ``get_classifier()`` for timm models, or of the model's
  ``fc`` / ``classifier`` / ``head`` linear layer), as a ``(B, C, 1, 1)`` map. A model
  with no such classifier gets the global average of its last stage's output instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from gpd.errors import ConfigError

# Modules whose input is a stage's pre-activation value when their output is the stage's output.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Softplus,
    nn.Tanh,
)


def feature_stage_names(model: nn.Module) -> list[str]:
    """The modules whose outputs are the model's stage features, shallow to deep.

    gpd's bundled models name them in ``stage_names``; timm models describe them in
    ``feature_info``; torchvision ResNets have ``layer1`` ... ``layer4``.
    """
    names = getattr(model, "stage_names", None)
    if names:
        return list(names)
    info = getattr(model, "feature_info", None)
    if info:
        modules = [entry["module"] for entry in info if isinstance(entry, dict) and entry.get("module")]
        modules = [m for m in modules if m in dict(model.named_modules())]
        if modules:
            return modules
    resnet_layers = [f"layer{i}" for i in range(1, 5) if hasattr(model, f"layer{i}")]
    if len(resnet_layers) >= 2:
        return resnet_layers
    raise ConfigError(
        f"cannot tell the feature stages of {type(model).__name__} for ReviewKD; "
        "give the model a stage_names attribute listing its stage modules"
    )


def classifier_name(model: nn.Module) -> str | None:
    """The name of the model's classifier layer (whose input is the pooled feature), or None.

    timm models name it through ``get_classifier()``; torchvision and gpd's models call
    it ``fc``, and others ``classifier`` or ``head`` (a Linear layer).
    """
    names = {id(module): name for name, module in model.named_modules()}
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            head = get_classifier()
        except Exception:
            head = None
        if isinstance(head, nn.Linear) and id(head) in names:
            return names[id(head)]
    for name in ("fc", "classifier", "head"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Linear):
            return names.get(id(module))
    return None


def as_feature_map(output: object) -> object:
    """A stage's output as a feature map: a ``(tokens (B, H*W, C), (H, W))`` pair becomes (B, C, H, W)."""
    if isinstance(output, tuple) and len(output) == 2:
        tokens, size = output
        grid_size = isinstance(size, (tuple, list)) and len(size) == 2
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 3 and grid_size:
            height, width = (int(s) for s in size)
            if height * width == tokens.shape[1]:
                return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)
    return output


@contextmanager
def stage_features(
    model: nn.Module, names: list[str], *, preact: bool = False, pooled: bool = False
) -> Iterator[list[torch.Tensor]]:
    """Collect the features of stages ``names`` (in that order) during the forward passes inside the block.

    ``preact`` taps each stage's value before its final activation, ``pooled`` appends the
    classifier's pooled input as a (B, C, 1, 1) map (see the module docstring).
    """
    features: dict[str, object] = {}
    outputs: dict[str, object] = {}
    last_activation: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
    pending: dict[int, torch.Tensor] = {}
    pooled_input: list[torch.Tensor] = []
    handles = []

    def stage_start(name: str) -> None:
        last_activation[name] = None

    def stage_end(name: str, out: object) -> None:
        outputs[name] = out
        record = last_activation.get(name)
        if preact and record is not None and record[1] is out:
            features[name] = record[0]
        else:
            features[name] = as_feature_map(out)

    def activation_start(module: nn.Module, args: tuple) -> None:
        value = args[0] if args else None
        if isinstance(value, torch.Tensor):
            # An in-place activation overwrites its input: keep a copy of the pre-activation value.
            pending[id(module)] = value.clone() if getattr(module, "inplace", False) else value

    def activation_end(name: str, module: nn.Module, out: object) -> None:
        value = pending.pop(id(module), None)
        if value is not None and isinstance(out, torch.Tensor):
            last_activation[name] = (value, out)

    try:
        for name in names:
            stage = model.get_submodule(name)
            handles.append(stage.register_forward_pre_hook(lambda mod, args, name=name: stage_start(name)))
            if preact:
                for module in stage.modules():
                    if isinstance(module, ACTIVATIONS):
                        handles.append(module.register_forward_pre_hook(activation_start))
                        handles.append(
                            module.register_forward_hook(
                                lambda mod, args, out, name=name: activation_end(name, mod, out)
                            )
                        )
            handles.append(stage.register_forward_hook(lambda mod, args, out, name=name: stage_end(name, out)))
        head = classifier_name(model) if pooled else None
        if head is not None:
            handles.append(
                model.get_submodule(head).register_forward_pre_hook(
                    lambda mod, args: (
                        pooled_input.append(args[0]) if args and isinstance(args[0], torch.Tensor) else None
                    )
                )
            )
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    ordered: list[torch.Tensor] = []
    try:
        yield ordered
    finally:
        for handle in handles:
            handle.remove()
        missing = [name for name in names if name not in features]
        if missing:
            raise ConfigError(f"stages {missing} of {type(model).__name__} did not run in the forward pass")
        ordered.extend(features[name] for name in names)  # type: ignore[misc]
        if pooled:
            ordered.append(_pooled_map(pooled_input[-1] if pooled_input else None, outputs[names[-1]]))


def _pooled_map(classifier_input: torch.Tensor | None, last_output: object) -> torch.Tensor:
    """The pooled level as (B, C, 1, 1): the classifier's (B, C) input, else the last stage's global average."""
    if classifier_input is not None and classifier_input.dim() == 2:
        return classifier_input[:, :, None, None]
    last = as_feature_map(last_output)
    if isinstance(last, torch.Tensor) and last.dim() == 4:
        return F.adaptive_avg_pool2d(last, 1)
    if classifier_input is not None and classifier_input.dim() == 4:
        return F.adaptive_avg_pool2d(classifier_input, 1)
    raise ConfigError(
        "ReviewKD's pooled level needs a classifier with a (B, C) input or a last stage giving (B, C, H, W) maps"
    )
