"""gpd.expand turns refusals into a one-line ExpansionError and lets bugs keep their traceback
(gpd.expansion.refusals); the argument errors of the API are ValueErrors (gpd.errors)."""

from __future__ import annotations

import functools
import threading

import pytest
import torch
from torch import nn

import gpd
from gpd.errors import ArgumentError, CheckpointError, ConfigError, DataError, ExpansionError, GPDError, ModelError
from gpd.expansion import RULES
from gpd.expansion import build as build_module
from gpd.expansion.layout import measure_input
from gpd.expansion.refusals import GPD_FILES, TORCH_FILES, is_bug

# ------------------------------------------------------------------------------ error classes


def test_argument_errors_are_value_errors() -> None:
    for cls in (ArgumentError, ConfigError, ExpansionError):
        assert issubclass(cls, GPDError) and issubclass(cls, ValueError)
        assert isinstance(cls("x"), ValueError)
    assert issubclass(ConfigError, ArgumentError)
    for cls in (DataError, ModelError, CheckpointError):
        assert issubclass(cls, GPDError) and not issubclass(cls, ValueError)


def test_a_bad_layout_argument_is_an_argument_error_with_the_former_message() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    with pytest.raises(ArgumentError) as info:
        gpd.expand(model, 2, input_size=(3, 6, 6), layout="diagonal")  # type: ignore[arg-type]
    assert str(info.value) == "layout must be 'auto', 'tiled', 'interleaved'; got 'diagonal'"
    assert not isinstance(info.value, ExpansionError)


def test_a_clashing_registration_is_an_argument_error() -> None:
    class Gain(nn.Module):
        pass

    def one(module, ctx):  # pragma: no cover - never called
        raise AssertionError

    def other(module, ctx):  # pragma: no cover - never called
        raise AssertionError

    local = type(RULES)()
    local.register(Gain, one)
    with pytest.raises(ArgumentError, match="registered already"):
        local.register(Gain, other)


# ------------------------------------------------------------------------------ refusals and bugs


class Odd(nn.Conv2d):
    """A conv subclass whose (test) rule has a bug."""


def _student() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), Odd(4, 4, 1), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def test_a_rule_raising_a_type_error_propagates_with_its_traceback() -> None:
    def buggy_rule(module: nn.Module, ctx) -> None:
        return len(module)  # type: ignore[arg-type]  # TypeError: a Conv2d has no len()

    with RULES.override(Odd, buggy_rule):
        with pytest.raises(TypeError, match="has no len") as info:
            gpd.expand(_student(), 2, input_size=(3, 6, 6))
    assert not isinstance(info.value, GPDError)
    assert info.traceback[-1].name == "buggy_rule"  # the frame that raised is still there


def test_a_bug_in_gpds_engine_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TypeError raised in gpd's own code (here a call with a wrong argument) while D is built is a bug."""
    monkeypatch.setattr(build_module, "measure_input", functools.partial(measure_input, not_an_argument=1))
    with pytest.raises(TypeError, match="not_an_argument"):
        gpd.expand(_student(), 2, input_size=(3, 6, 6))


class WidthPicky(nn.Module):
    """Runs at the student's width only: its own forward refuses D's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean((2, 3))
        if h.shape[1] != 8:
            raise RuntimeError(f"expected 8 channels, got {h.shape[1]}")
        return self.fc(h)


def test_a_model_whose_forward_raises_is_refused_in_one_line() -> None:
    with pytest.raises(ExpansionError) as info:
        gpd.expand(WidthPicky(), 2, input_size=(3, 6, 6))
    message = str(info.value)
    assert "\n" not in message and "expected 8 channels, got 16" in message
    causes = []
    err: BaseException | None = info.value
    while err is not None:
        causes.append(type(err))
        err = err.__cause__
    assert causes[-1] is RuntimeError  # the model's own error, kept as the cause


class Unpicklable(nn.Module):
    """A model the expansion cannot copy (a lock among its attributes): refused, not a bug."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_a_model_that_cannot_be_copied_is_refused() -> None:
    with pytest.raises(ExpansionError, match="the expansion failed: TypeError") as info:
        gpd.expand(Unpicklable(), 2, example_input=torch.randn(2, 4))
    assert "\n" not in str(info.value)


def _raise_from(path: str) -> BaseException:
    """An exception whose innermost frame is in ``path`` (code compiled under that file name)."""
    namespace: dict = {}
    exec(compile("def fail():\n    raise IndexError('x')\n", path, "exec"), namespace)
    try:
        namespace["fail"]()
    except IndexError as err:
        return err
    raise AssertionError("unreachable")


def test_the_innermost_frame_outside_torch_decides() -> None:
    assert is_bug(_raise_from(str(GPD_FILES / "expansion" / "build.py")))  # gpd's engine
    assert not is_bug(_raise_from(str(GPD_FILES / "models" / "wrn.py")))  # gpd's model zoo: a model's code
    assert not is_bug(_raise_from("/somewhere/my_model.py"))  # the user's model
    assert not is_bug(ExpansionError("refused"))
    # torch's own frames are looked through: a torch function called by gpd's engine is gpd's bug ...
    namespace: dict = {}
    exec(compile("def torch_op():\n    raise IndexError('x')\n", str(TORCH_FILES / "functional.py"), "exec"), namespace)
    site = "def call_site(run):\n    try:\n        run()\n    except IndexError as err:\n        return err\n"
    exec(compile(site, str(GPD_FILES / "expansion" / "expand.py"), "exec"), namespace)
    exec(compile("def engine():\n    torch_op()\n", str(GPD_FILES / "expansion" / "build.py"), "exec"), namespace)
    assert is_bug(namespace["call_site"](namespace["engine"]), below_call_site=True)
    # ... but where gpd called a model made of torch's layers only, a failure below that call is the model's
    from_torch = namespace["call_site"](namespace["torch_op"])
    assert is_bug(from_torch) and not is_bug(from_torch, below_call_site=True)


def test_a_nan_never_counts_as_equal() -> None:
    """NaN compares false, so a plain maximum of |D - S| would read two NaN outputs as identical."""
    from gpd.expansion.verify import relative_error

    nan, inf = float("nan"), float("inf")
    assert relative_error(torch.tensor([nan, 1.0]), torch.tensor([nan, 1.0])) == inf
    assert relative_error(torch.tensor([nan, 1.0]), torch.tensor([0.0, 1.0])) == inf
    assert relative_error(torch.tensor([-inf, 1.0]), torch.tensor([inf, 1.0])) == inf
    assert (
        relative_error(torch.tensor([inf, 1.5]), torch.tensor([inf, 1.0])) == 0.5
    )  # infinities in place, the rest compared


def test_a_model_whose_output_is_nan_is_refused_by_name() -> None:
    class NaNNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * float("nan")

    with pytest.raises(gpd.ExpansionError, match="holds NaN"):
        gpd.expand(NaNNet(), ratio=2, example_input=torch.randn(2, 4))
