"""D is "dynamic" in gpd's own names too; an old public name of a result keeps working and warns."""

from __future__ import annotations

import pytest

from gpd.channel_maps import WidthPlan
from gpd.expansion.zoo import ZooResult


def test_zoo_result_names_d_dynamic_and_keeps_the_old_names() -> None:
    result = ZooResult("m", 2.0, True, dynamic_error=1e-7, dynamic_params=40)
    with pytest.warns(DeprecationWarning, match=r"ZooResult.teacher_error is deprecated, use ZooResult.dynamic_error"):
        assert result.teacher_error == 1e-7
    with pytest.warns(
        DeprecationWarning, match=r"ZooResult.teacher_params is deprecated, use ZooResult.dynamic_params"
    ):
        assert result.teacher_params == 40


def test_channel_maps_name_ds_size_dynamic_and_keep_the_old_names() -> None:
    plan = WidthPlan(2.0)
    channel_map = plan.map(3)
    assert plan.dynamic_size(3) == channel_map.dynamic_size == 6
    with pytest.warns(
        DeprecationWarning, match=r"WidthPlan.teacher_size\(\) is deprecated, use WidthPlan.dynamic_size"
    ):
        assert plan.teacher_size(3) == 6
    with pytest.warns(DeprecationWarning, match=r"ChannelMap.teacher_size is deprecated, use ChannelMap.dynamic_size"):
        assert channel_map.teacher_size == 6
