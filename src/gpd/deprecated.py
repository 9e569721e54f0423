"""The old names of the dynamic teacher and of λ, kept for one release: each use warns.

"teacher" used to name two networks: the dynamic teacher D (``GPDModel.teacher``, the
loss key ``ce_teacher``, the metrics column ``teacher_acc``) and the frozen static
teacher (``Distiller(teacher=...)``, the ``teacher.*`` config keys). D is now "dynamic"
everywhere and "teacher" is the static teacher only (the two roles of docs/method.md).
``gpd.kd_weight``, the weight λ of SCE(S ‖ sg(D)), read as if it weighted the KD method
(that is ``kd.weight``); it is now ``gpd.sce_weight``.

Old configs, run directories, checkpoints and calls keep working through the mappings
here. What users write or keep on disk (config keys, metrics columns, checkpoint keys)
warns with a FutureWarning, which Python shows by default; the Python API with a
DeprecationWarning. Every message names the new name.

The attribute ``GPDModel.teacher`` (and the unshared pair's) can be read, not assigned:
assign ``dynamic`` (an assignment of an old name would need ``nn.Module.__setattr__`` overridden).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, TypeVar

REMOVAL = "the old name will be removed in the next release"

OLD_ROLE, ROLE = "teacher", "dynamic"

# D's loss terms as returned by Distiller.forward, and the metrics.csv columns made from them
LOSS_KEYS = {"ce_teacher": "ce_dynamic", "kd_teacher": "kd_dynamic", "reviewkd_teacher": "reviewkd_dynamic"}
METRIC_COLUMNS = {
    "teacher_acc": "dynamic_acc",
    "ema_teacher_acc": "ema_dynamic_acc",
    "val_teacher_acc": "val_dynamic_acc",
    "val_ema_teacher_acc": "val_ema_dynamic_acc",
    "grad_norm_teacher": "grad_norm_dynamic",
    **{f"loss_{old}": f"loss_{new}" for old, new in LOSS_KEYS.items()},
}

# config keys by section: old name -> new name
CONFIG_KEYS = {"gpd": {"kd_weight": "sce_weight", "compensate_step": "step_rule"}}

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def step_rule_of(compensate_step: Any) -> str:
    """The ``step_rule`` that the old boolean ``compensate_step`` meant: True -> "plain", False -> "paper"."""
    text = str(compensate_step).strip().lower()
    if isinstance(compensate_step, bool) or text in _TRUE + _FALSE:
        return "plain" if compensate_step is True or text in _TRUE else "paper"
    from gpd.errors import ConfigError

    raise ConfigError(f"gpd.compensate_step (now gpd.step_rule) must be true or false, got '{compensate_step}'")


# renamed config keys whose values change too: section -> old name -> the old value's new value
CONFIG_VALUES: dict[str, dict[str, Callable[[Any], Any]]] = {"gpd": {"compensate_step": step_rule_of}}

# the step rule of an old boolean: compensate_step=True took the plain networks' steps
COMPENSATE_STEP_RULES = {True: "plain", False: "paper"}

F = TypeVar("F", bound=Callable[..., Any])


def warn_renamed(old: str, new: str, *, user_facing: bool = False, stacklevel: int = 3) -> None:
    """Warn that ``old`` is now ``new``; ``user_facing``: a FutureWarning (configs, files on
    disk) rather than a DeprecationWarning (the Python API)."""
    category = FutureWarning if user_facing else DeprecationWarning
    warnings.warn(f"{old} is deprecated, use {new} ({REMOVAL})", category, stacklevel=stacklevel)


def dynamic_role(role: str) -> str:
    """A role given at a call, with the old ``"teacher"`` (meaning D) mapped to ``"dynamic"``."""
    if role == OLD_ROLE:
        warn_renamed("role='teacher'", "role='dynamic'", stacklevel=4)
        return ROLE
    return role


def renamed_kwargs(**renames: str) -> Callable[[F], F]:
    """Let a function take its arguments' old keyword names (``old="new"``), warning once per call."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(
                            f"{fn.__qualname__}() got {old}= and {new}=; {old} is the old name of {new}, give only {new}"
                        )
                    warn_renamed(f"{fn.__qualname__}({old}=...)", f"{new}=...", stacklevel=3)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def renamed_value(where: str, old: str, new: str, value: Any, values: Mapping[Any, Any], *, stacklevel: int = 4) -> Any:
    """``values[value]``, the new keyword's value for the old keyword's ``value``, with a warning naming both
    (``compensate_step=True`` -> ``step_rule='plain'``); ValueError for a value the old keyword never took."""
    if value not in values:
        raise ValueError(f"{where}: {old} must be one of {', '.join(map(repr, values))}, got {value!r}")
    mapped = values[value]
    warn_renamed(f"{where}({old}={value!r})", f"{new}={mapped!r}", stacklevel=stacklevel)
    return mapped


def renamed_value_kwargs(old: str, new: str, values: Mapping[Any, Any]) -> Callable[[F], F]:
    """As :func:`renamed_kwargs`, for an old keyword whose values differ from the new one's: ``old=v`` is
    read as ``new=values[v]`` (warning once per call); giving both is a TypeError."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(
                        f"{fn.__qualname__}() got {old}= and {new}=; {old} is the old form of {new}, give only {new}"
                    )
                kwargs[new] = renamed_value(fn.__qualname__, old, new, kwargs.pop(old), values)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def upgrade_columns(names: Iterable[str], where: str) -> list[str]:
    """Metrics column names with the old ones renamed (one warning naming ``where``); a column
    whose new name is there as well keeps its old name."""
    names = list(names)
    present = set(names)
    renamed = {n: METRIC_COLUMNS[n] for n in names if n in METRIC_COLUMNS and METRIC_COLUMNS[n] not in present}
    if renamed:
        warnings.warn(
            f"{where} has the old column names {', '.join(renamed)}; they are read as "
            f"{', '.join(renamed.values())} ({REMOVAL}; resuming the run rewrites the file with the new names)",
            FutureWarning,
            stacklevel=3,
        )
    return [renamed.get(n, n) for n in names]


def upgrade_rows(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Metrics rows (dicts) with the old column names renamed, as :func:`upgrade_columns` does."""
    if not rows or not any(key in METRIC_COLUMNS for row in rows for key in row):
        return rows
    keys = list(dict.fromkeys(key for row in rows for key in row))
    mapping = dict(zip(keys, upgrade_columns(keys, where)))
    return [{mapping[k]: v for k, v in row.items()} for row in rows]


def upgrade_state_keys(state_dict: MutableMapping[str, Any], prefix: str, old: str, new: str, what: str) -> None:
    """Rename, in place, the keys ``{prefix}{old}.*`` of an older state_dict to ``{prefix}{new}.*``.

    Only the module that owns the child ``new`` calls this, with its own ``prefix``, so the
    keys of any other module (the static teacher's ``static_teacher.*``) are never touched.
    A state_dict holding new keys as well is left as it is (strict loading reports the rest).
    """
    old_prefix, new_prefix = f"{prefix}{old}.", f"{prefix}{new}."
    keys = [key for key in state_dict if key.startswith(old_prefix)]
    if not keys or any(key.startswith(new_prefix) for key in state_dict):
        return
    warnings.warn(
        f"the state_dict has {what} under the old keys '{old_prefix}*'; loaded as '{new_prefix}*' ({REMOVAL}; "
        "save it again to keep the new keys)",
        FutureWarning,
        stacklevel=4,
    )
    for key in keys:
        state_dict[new_prefix + key[len(old_prefix) :]] = state_dict.pop(key)


def upgrade_distiller_keys(state_dict: MutableMapping[str, Any], prefix: str) -> None:
    """Rename, in place, a Distiller's older keys (called by the Distiller alone): its trained network
    was ``gpd.*`` (with a dynamic teacher) or ``plain.*`` (the baseline) and is ``network.*``; the KD
    method's heads were ``review_heads.<role>.*`` (D's role ``teacher`` before it was ``dynamic``) and
    are ``kd_method.heads.<role>.*``. D's own keys are renamed by its pair (gpd_model.PairRoles)."""
    for old in ("gpd", "plain"):
        upgrade_state_keys(state_dict, prefix, old, "network", "the trained network")
    upgrade_state_keys(state_dict, f"{prefix}review_heads.", OLD_ROLE, ROLE, "D's ReviewKD head")
    upgrade_state_keys(state_dict, prefix, "review_heads", "kd_method.heads", "the KD method's heads")


def upgrade_task_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A timm task state of an older gpd (``{"review_heads": {<role>.*}}``) as this one writes it
    (``{"kd_method": {"heads.<role>.*"}}``); a new one as it is."""
    if "review_heads" not in state:
        return dict(state)
    heads = {f"review_heads.{key}": value for key, value in state["review_heads"].items()}
    upgrade_distiller_keys(heads, "")
    rest = {key: value for key, value in state.items() if key != "review_heads"}
    return {**rest, "kd_method": {key[len("kd_method.") :]: value for key, value in heads.items()}}


def upgrade_config_layer(layer: dict[str, Any], where: str) -> dict[str, Any]:
    """A config layer (plain dicts, e.g. a YAML file's content) with old keys renamed; the old and
    the new name of one key both given is an error. Returns ``layer`` itself when nothing is old."""
    from gpd.errors import ConfigError

    changed: dict[str, Any] | None = None
    for section, keys in CONFIG_KEYS.items():
        values = layer.get(section)
        if not isinstance(values, dict):
            continue
        for old, new in keys.items():
            if old not in values:
                continue
            if new in values:
                raise ConfigError(
                    f"{section}.{old} and {section}.{new} are both given {where}; "
                    f"{section}.{old} is the old name of {section}.{new}: keep only {section}.{new}"
                )
            warn_renamed(f"config key {section}.{old} ({where})", f"{section}.{new}", user_facing=True, stacklevel=5)
            changed = changed if changed is not None else {**layer}
            convert = CONFIG_VALUES.get(section, {}).get(old, _same)
            values = {(new if k == old else k): (convert(v) if k == old else v) for k, v in values.items()}
            changed[section] = values
    return changed if changed is not None else layer


def upgrade_overrides(overrides: list[str]) -> list[str]:
    """``key=value`` overrides with old keys renamed (warning); an old and a new name both given is an error."""
    from gpd.errors import ConfigError

    old_to_new = {f"{s}.{old}": f"{s}.{new}" for s, keys in CONFIG_KEYS.items() for old, new in keys.items()}
    given = {item.split("=", 1)[0].strip() for item in overrides}
    result = []
    for item in overrides:
        key, sep, value = item.partition("=")
        new = old_to_new.get(key.strip())
        if new is None:
            result.append(item)
            continue
        if new in given:
            raise ConfigError(
                f"overrides '{key.strip()}' and '{new}' both given; {key.strip()} is the old name of {new}: keep only {new}"
            )
        warn_renamed(f"config key {key.strip()} (override '{item}')", new, user_facing=True, stacklevel=4)
        section, old = key.strip().split(".", 1)
        convert = CONFIG_VALUES.get(section, {}).get(old)
        result.append(f"{new}{sep}{convert(value) if convert is not None else value}")
    return result


def _same(value: Any) -> Any:
    return value
