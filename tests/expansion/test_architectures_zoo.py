"""The zoo of docs/architectures.md: exact or refused with gpd.ExpansionError, never silently different.

A few fast models of the families the layout measurement, the generic per-channel
tensors and the per-head tables made expandable run in the default suite and must be
exact; every zoo model runs under ``-m slow`` (``make test-slow``), where ``check_model``
lets no exception but ExpansionError through and an exact model must pass all three
checks (D, student view, strict export) on a fresh input.
"""

from __future__ import annotations

import pytest

from gpd.expansion.zoo import ZOO, check_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FAST_EXACT = [
    "timm:mobilevit_xxs",
    "timm:mixer_s32_224",
    "timm:levit_128s",
    "timm:convnextv2_atto",
    "timm:pit_ti_224",
    "tv:squeezenet1_1",
    "tv:densenet121",
    "tv:googlenet",
]
BY_NAME = {spec.name: spec for spec in ZOO}


def test_zoo_is_large_and_names_are_unique() -> None:
    assert len(ZOO) >= 100
    assert len(BY_NAME) == len(ZOO)


@pytest.mark.parametrize("name", FAST_EXACT)
def test_fast_representatives_are_exact(name: str) -> None:
    result = check_model(BY_NAME[name], 2)
    assert result.exact, result.reason
    assert max(result.dynamic_error, result.student_error, result.export_error) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", [spec.name for spec in ZOO])
def test_every_zoo_model_is_exact_or_refused(name: str) -> None:
    result = check_model(BY_NAME[name], 2)  # any exception but ExpansionError fails here
    if result.exact:
        assert max(result.dynamic_error, result.student_error, result.export_error) <= 1e-4
    else:
        assert result.reason and "\n" not in result.reason, result.reason
        assert not result.reason.startswith("differs on a fresh input"), result.reason  # silently different


def test_float64_check_reads_d_as_built_in_float64() -> None:
    """At r = 3 float32 rounds D's W / 3; this net amplifies that past 1e-6 (it was refused for it).

    The float64 check must compare the mapping (D as built in float64), not the rounding.
    """
    import torch

    import gpd
    from gpd.testing import perturbed_for_verification

    spec = BY_NAME["tv:mobilenet_v3_large"]
    torch.manual_seed(0)  # as check_model
    student = perturbed_for_verification(spec.factory(), spec.input_size)
    gm = gpd.expand(student, 3, input_size=spec.input_size)
    assert gm.report.checked_in_float64  # float32 alone did not settle it
    assert check_model(spec, 3).exact
