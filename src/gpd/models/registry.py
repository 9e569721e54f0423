"""Model registry: one entry point that builds bundled, torchvision and timm classifiers.

Every model built here carries a ``gpd_spec`` attribute (a dict of plain Python values)
so an exported student can be rebuilt later without pickling code: the spec names the
architecture, the head size, the input channels and the extra keyword arguments.

Names:

* a bundled name such as ``resnet20`` or ``wrn_40_2`` (see :func:`list_models`);
* ``tv:NAME`` for any torchvision classification or segmentation model (``tv:fcn_resnet50``);
* ``timm:NAME`` for any timm model;
* ``timm-seg:NAME`` for a timm backbone with an FPN segmentation head (:mod:`gpd.models.timm_fpn`);
* ``hf:PATH`` for a Hugging Face transformers classifier saved with ``save_pretrained``
  (:mod:`gpd.models.transformers_hub`);
* ``MODULE:FACTORY`` or ``path/to/file.py:FACTORY`` for a model of your own
  (:mod:`gpd.models.import_path`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gpd.errors import ModelError
from gpd.models import import_path, timm_fpn, transformers_hub, tv_segmentation

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}

TV_PREFIX = "tv:"
TIMM_PREFIX = "timm:"
PRETRAINED_UNAVAILABLE = "pretrained weights are not available offline; pass a checkpoint instead"
SPEC_ATTRIBUTE = "gpd_spec"  # the attribute every model built here carries


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``fn(num_classes, in_chans, **kwargs) -> nn.Module`` under ``name``.

    Names containing ':' are refused because that syntax is reserved for tv:/timm:.
    Registering the same function twice (a module reload) is allowed; a different
    function under a taken name is a programming error and raises.
    """
    if not name or ":" in name or name != name.strip():
        raise ModelError(f"invalid model name {name!r}: names must be non-empty and contain no ':'")

    def decorator(fn: ModelFactory) -> ModelFactory:
        old = _REGISTRY.get(name)
        if old is not None and _qualified(old) != _qualified(fn):
            raise ModelError(f"model name {name!r} is already registered by {_qualified(old)}")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Sorted names of the bundled models (tv:NAME and timm:NAME are accepted besides)."""
    return sorted(_REGISTRY)


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a classifier by name and attach ``gpd_spec`` so it can be rebuilt later.

    Raises :class:`ModelError` (one-line message) for unknown names, bad sizes,
    unsupported keyword arguments and unavailable pretrained weights.
    """
    if not isinstance(name, str):
        raise ModelError(f"model name must be a string, got {type(name).__name__}")
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("in_chans", in_chans)
    spec_kwargs = {key: _plain(value, f"{name} kwarg {key!r}") for key, value in kwargs.items()}

    if name.startswith(TV_PREFIX):
        model = _create_torchvision(name[len(TV_PREFIX) :], num_classes, in_chans, pretrained, kwargs)
    elif name.startswith(TIMM_PREFIX):
        model = _create_timm(name[len(TIMM_PREFIX) :], num_classes, in_chans, pretrained, kwargs)
    elif name.startswith(timm_fpn.PREFIX):
        model = timm_fpn.create(name[len(timm_fpn.PREFIX) :], num_classes, in_chans, pretrained, kwargs)
    elif transformers_hub.is_hf_name(name):  # its directory's weights load when present, pretrained or not
        name = transformers_hub.canonical(name)
        model = transformers_hub.create(name, num_classes, in_chans, kwargs)
    elif import_path.is_import_path(name):
        if pretrained:
            raise ModelError(
                f"{PRETRAINED_UNAVAILABLE} (model {name!r} is your own: load its weights with a checkpoint)"
            )
        name = import_path.canonical(name)
        model = import_path.create(name, num_classes, in_chans, kwargs)
    else:
        model = _create_bundled(name, num_classes, in_chans, pretrained, kwargs)

    spec = {"name": name, "num_classes": int(num_classes), "in_chans": int(in_chans), "kwargs": spec_kwargs}
    if transformers_hub.is_hf_name(name):
        spec.update(transformers_hub.spec_fields(model))
    setattr(model, SPEC_ATTRIBUTE, spec)  # a plain attribute, not a tensor or module
    return model


def check_model_name(name: str) -> None:
    """Raise :class:`ModelError` if ``name`` names no bundled, torchvision or timm model.

    Cheap (nothing is built), so a config can be checked before any data is loaded.
    """
    if not isinstance(name, str):
        raise ModelError(f"model name must be a string, got {type(name).__name__}")
    if name.startswith(TV_PREFIX):
        _check_torchvision_name(name[len(TV_PREFIX) :])
    elif name.startswith(TIMM_PREFIX):
        _check_timm_name(name[len(TIMM_PREFIX) :])
    elif name.startswith(timm_fpn.PREFIX):
        timm_fpn.check_name(name[len(timm_fpn.PREFIX) :])
    elif transformers_hub.is_hf_name(name):
        transformers_hub.import_transformers(name)
        transformers_hub.check_directory(name)
    elif import_path.is_import_path(name):
        import_path.resolve_factory(name)  # imports the module: a missing one is an error now
    elif name not in _REGISTRY:
        raise ModelError(_unknown_name_message(name))


def create_model_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a (randomly initialised) model from a ``gpd_spec`` dict.

    Extra keys are ignored so that specs written by later versions still load. A transformers
    model is rebuilt from the config its spec records, without its directory.
    """
    if not isinstance(spec, dict):
        raise ModelError(f"model spec must be a dict, got {type(spec).__name__}")
    missing = [key for key in ("name", "num_classes") if key not in spec]
    if missing:
        raise ModelError(f"model spec is missing {', '.join(missing)}")
    if transformers_hub.is_hf_name(spec["name"]) and transformers_hub.CONFIG_KEY in spec:
        model = transformers_hub.from_spec(spec)
        setattr(model, SPEC_ATTRIBUTE, dict(spec))
        return model
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ModelError(f"model spec 'kwargs' must be a dict, got {type(kwargs).__name__}")
    return create_model(
        spec["name"],
        num_classes=spec["num_classes"],
        in_chans=spec.get("in_chans", 3),
        **dict(kwargs),
    )


def timm_needs_img_size(name: str) -> bool:
    """Whether ``timm:NAME`` is built for one input size (ViT-style position embeddings).

    Such models must be told the image size at construction; convolutional ones
    accept any size and would reject an ``img_size`` argument.
    """
    return _timm_fixed_size(name) is not None


def sized_kwargs(name: str, kwargs: dict[str, Any], input_size: tuple[int, ...]) -> dict[str, Any]:
    """``kwargs`` for building ``name`` on images of ``input_size`` (C, H, W).

    A timm model built for one input size (DeiT, ViT) gets ``img_size`` when the images
    differ from its default size and ``kwargs`` does not set it already; any other model
    gets ``kwargs`` unchanged. timm resamples the position embedding of pretrained
    weights to that size.
    """
    default = _timm_fixed_size(name)
    if default is None or "img_size" in kwargs or len(input_size) != 3 or tuple(input_size[1:]) == default:
        return dict(kwargs)
    height, width = (int(s) for s in input_size[1:])
    return {**kwargs, "img_size": height if height == width else [height, width]}


def _timm_fixed_size(name: str) -> tuple[int, int] | None:
    """The (H, W) a fixed-input-size ``timm:NAME`` is built for by default, else None."""
    if not isinstance(name, str) or not name.startswith(TIMM_PREFIX):
        return None
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name[len(TIMM_PREFIX) :])
    except Exception:  # an unknown name: create_model reports it properly
        return None
    if cfg is None or not getattr(cfg, "fixed_input_size", False):
        return None
    return tuple(int(s) for s in cfg.input_size[-2:])  # type: ignore[return-value]


# ---------------------------------------------------------------------------- helpers


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _check_positive_int(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{what} must be a positive integer, got {value!r}")


def _plain(value: Any, where: str) -> Any:
    """Copy ``value`` as plain Python data (tuples become lists) so the spec is serialisable."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item, where) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _plain(item, where) for key, item in value.items()}
    raise ModelError(
        f"{where} is a {type(value).__name__}; only plain values (numbers, strings, lists, dicts) "
        "can be recorded so that the model can be rebuilt"
    )


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _unknown_name_message(name: str) -> str:
    bundled = list_models()
    close = difflib.get_close_matches(name, bundled, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"unknown model {name!r}{hint}; bundled models: {', '.join(bundled)}; "
        "or use tv:NAME for a torchvision model, timm:NAME for a timm model, timm-seg:NAME for a timm segmenter, "
        "hf:PATH for a transformers directory, or MODULE:FACTORY / path/to/file.py:FACTORY for a model of your own"
    )


def _check_torchvision_name(arch: str) -> None:
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm) + tv_segmentation.names()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=1)
        hint = f" (did you mean 'tv:{close[0]}'?)" if close else ""
        raise ModelError(f"unknown torchvision classification or segmentation model 'tv:{arch}'{hint}")


def _check_timm_name(arch: str) -> None:
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=1)
        hint = f" (did you mean 'timm:{close[0]}'?)" if close else ""
        raise ModelError(f"unknown timm model 'timm:{arch}'{hint}")


def _create_bundled(name: str, num_classes: int, in_chans: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ModelError(_unknown_name_message(name))
    if pretrained:
        raise ModelError(f"{PRETRAINED_UNAVAILABLE} (model {name!r})")
    # Check keyword arguments against the signature so a typo is a user error, while a
    # TypeError raised inside a factory still surfaces as the bug it is.
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = [k for k in params if k not in ("num_classes", "in_chans")]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            listed = ", ".join(accepted) if accepted else "none"
            raise ModelError(f"model {name!r} got unknown argument(s) {', '.join(unknown)}; accepted: {listed}")
    try:
        return factory(num_classes=num_classes, in_chans=in_chans, **kwargs)
    except ValueError as err:
        raise ModelError(f"cannot build model {name!r}: {_one_line(err)}") from err


def _create_torchvision(
    arch: str, num_classes: int, in_chans: int, pretrained: bool, kwargs: dict[str, Any]
) -> nn.Module:
    import torchvision.models as tvm

    _check_torchvision_name(arch)
    if arch in tv_segmentation.names():
        model = tv_segmentation.create(arch, num_classes, pretrained, kwargs)
        if in_chans != 3:
            _replace_first_conv(model, f"tv:{arch}", in_chans, keep_weights=pretrained)
        return model
    try:
        if pretrained:
            # torchvision cannot resize a pretrained head, so load the 1000-class model
            # and replace the head only when the sizes differ.
            model = tvm.get_model(arch, weights="DEFAULT", **kwargs)
        else:
            model = tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as err:
        raise ModelError(f"cannot build 'tv:{arch}': {_one_line(err)}") from err
    except Exception as err:  # download / cache failures: offline machine
        if not pretrained:
            raise
        raise ModelError(f"{PRETRAINED_UNAVAILABLE} (tv:{arch}: {_one_line(err)})") from err
    if pretrained:
        _resize_torchvision_head(model, arch, num_classes)
    if in_chans != 3:
        _replace_first_conv(model, f"tv:{arch}", in_chans, keep_weights=pretrained)
    return model


def _resize_torchvision_head(model: nn.Module, arch: str, num_classes: int) -> None:
    """Swap the last Linear layer for a fresh one when a pretrained head has the wrong size."""
    last: tuple[str, nn.Linear] | None = None
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (mod_name, module)
    if last is None or last[1].out_features == num_classes:
        return
    mod_name, old = last
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    _set_submodule(model, mod_name, new)


def _replace_first_conv(model: nn.Module, label: str, in_chans: int, keep_weights: bool) -> None:
    """Rebuild the first Conv2d with ``in_chans`` inputs and otherwise the same hyper-parameters."""
    for mod_name, module in model.named_modules():  # noqa: B007 (mod_name is used after the loop)
        if isinstance(module, nn.Conv2d):
            break
    else:
        raise ModelError(f"cannot set in_chans={in_chans} for {label!r}: it has no Conv2d layer")
    old: nn.Conv2d = module
    if in_chans % old.groups != 0:
        raise ModelError(f"cannot set in_chans={in_chans} for {label!r}: its first conv has groups={old.groups}")
    new = nn.Conv2d(
        in_chans,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    if keep_weights:
        # Spread the pretrained filter over the new channels so activations keep their scale.
        with torch.no_grad():
            mean = old.weight.mean(dim=1, keepdim=True)
            new.weight.copy_(mean.repeat(1, new.weight.shape[1], 1, 1) * (old.in_channels / in_chans))
            if old.bias is not None and new.bias is not None:
                new.bias.copy_(old.bias)
    _set_submodule(model, mod_name, new)


def _set_submodule(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _create_timm(arch: str, num_classes: int, in_chans: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    _check_timm_name(arch)
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as err:
        raise ModelError(f"cannot build 'timm:{arch}': {_one_line(err)}") from err
    except Exception as err:  # download / cache failures: offline machine
        if not pretrained:
            raise ModelError(f"cannot build 'timm:{arch}': {_one_line(err)}") from err
        raise ModelError(f"{PRETRAINED_UNAVAILABLE} (timm:{arch}: {_one_line(err)})") from err
