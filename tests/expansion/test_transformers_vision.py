"""transformers' vision models with per-head tables and head counts expand exactly at r = 2.

BEiT and Swin hold relative position bias tables ``(offsets, heads)``, Swinv2 per-head logit
scales and a position bias MLP with one output per head, LeViT attention biases
``(heads, offsets)``, MobileViT head counts that its forward reshapes with; EfficientNet needs
nothing new. D tiles every per-head table on its head axis and doubles the counts
(gpd.expansion.head_tables, gpd.expansion.transformers_vision). Every table is drawn at
random first: at their initial zeros a wrong layout would not show.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import gpd
from gpd.expansion import RULES
from gpd.expansion.head_tables import ExpandHeadTensors, HeadTensors
from gpd.inputs import call_model
from gpd.outputs import logits_of
from helpers import assert_nontrivial, hf_vision_model, rel_err

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("torch_single_thread")

NAMES = ["beit", "beit_shared", "swin", "swinv2", "levit", "mobilevit", "efficientnet"]


def _images(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _logits(model: object, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return logits_of(call_model(model, x))


@pytest.mark.parametrize("name", NAMES)
def test_the_expansion_is_exact(name: str) -> None:
    """In float64, where float32's rounding (1e-5 on LeViT) cannot hide a wrong layout."""
    model, size = hf_vision_model(name)
    model = model.double()
    x = _images(size).double()
    expanded = gpd.expand(model, ratio=2, example_input=x).eval()
    other = _images(size, seed=1).double()  # not the example the expansion measured
    expected = _logits(model, other)
    assert_nontrivial(expected)
    assert rel_err(_logits(expanded.forward_dynamic, other), expected) <= 1e-9
    assert rel_err(_logits(expanded.forward_student, other), expected) <= 1e-12


PER_HEAD = {  # model -> (a per-head parameter's name ending, its head axis)
    "beit": ("relative_position_bias_table", 1),
    "beit_shared": ("relative_position_bias_table", 1),
    "swin": ("relative_position_bias_table", 1),
    "swinv2": ("logit_scale", 0),
    "levit": ("attention_biases", 0),
}


@pytest.mark.parametrize("name", list(PER_HEAD))
def test_per_head_tables_are_tiled_on_their_head_axis(name: str) -> None:
    model, size = hf_vision_model(name)
    expanded = gpd.expand(model, ratio=2, example_input=_images(size))
    ending, axis = PER_HEAD[name]
    dynamic = dict(expanded.dynamic.named_parameters())
    tables = [(n, p) for n, p in model.named_parameters() if n.endswith(ending)]
    assert tables
    for table_name, table in tables:
        torch.testing.assert_close(dynamic[table_name], torch.cat([table, table], axis), rtol=0, atol=0)
        assert expanded.student.slices[table_name].paper_scale == 1.0  # inside the attention core
        assert expanded.student.slices[table_name].divided_dim is None


def test_swinv2s_position_bias_mlp_keeps_its_width_and_writes_twice_the_heads() -> None:
    model, size = hf_vision_model("swinv2")
    expanded = gpd.expand(model, ratio=2, example_input=_images(size))
    student_attention = model.swinv2.encoder.layers[1].blocks[0].attention.self
    attention = expanded.dynamic.swinv2.encoder.layers[1].blocks[0].attention.self
    assert type(attention) is type(student_attention)
    assert (attention.num_attention_heads, attention.all_head_size) == (8, 64)
    hidden, out = attention.continuous_position_bias_mlp[0], attention.continuous_position_bias_mlp[2]
    assert (hidden.in_features, hidden.out_features, out.in_features, out.out_features) == (2, 512, 512, 8)
    student_out = student_attention.continuous_position_bias_mlp[2].weight
    torch.testing.assert_close(out.weight, torch.cat([student_out, student_out]), rtol=0, atol=0)


def test_head_counts_are_doubled() -> None:
    levit, size = hf_vision_model("levit")
    dynamic = gpd.expand(levit, ratio=2, example_input=_images(size)).dynamic
    for student, wide in zip(levit.modules(), dynamic.modules()):
        if type(student).__name__ in ("LevitAttention", "LevitAttentionSubsample"):
            for count in ("num_attention_heads", "out_dim_keys_values", "out_dim_projection"):
                assert getattr(wide, count) == 2 * getattr(student, count), count
            assert wide.attention_bias_cache == {} or all(
                v.shape[0] == wide.num_attention_heads for v in wide.attention_bias_cache.values()
            )
    mobilevit, size = hf_vision_model("mobilevit")
    dynamic = gpd.expand(mobilevit, ratio=2, example_input=_images(size)).dynamic
    pairs = [
        (s, d) for s, d in zip(mobilevit.modules(), dynamic.modules()) if type(s).__name__ == "MobileViTSelfAttention"
    ]
    assert pairs
    for student, wide in pairs:
        assert (wide.num_attention_heads, wide.all_head_size) == (
            2 * student.num_attention_heads,
            2 * student.all_head_size,
        )
        assert wide.attention_head_size == student.attention_head_size


def test_a_wrong_head_axis_is_refused_not_silent() -> None:
    """Declared on its offsets axis, Swin's table gives D the student's head count: refused."""
    from transformers.models.swin.modeling_swin import SwinRelativePositionBias

    model, size = hf_vision_model("swin")
    wrong = ExpandHeadTensors(HeadTensors({"relative_position_bias_table": 0}))
    with RULES.override(SwinRelativePositionBias, wrong), pytest.raises(gpd.ExpansionError):
        gpd.expand(model, ratio=2, example_input=_images(size))


class TableAttention(nn.Module):
    """A user's attention with a learned per-head bias over token pairs, ``(heads, tokens, tokens)``,
    and a head count that its forward reshapes with."""

    def __init__(self, dim: int = 12, heads: int = 3, tokens: int = 5) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.pair_bias = nn.Parameter(torch.randn(heads, tokens, tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.heads, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        attention = (q @ k.transpose(-2, -1) * self.head_dim**-0.5 + self.pair_bias).softmax(-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class TableNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 12)
        self.attention = TableAttention()
        self.head = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        return self.head((x + self.attention(x)).mean(1))


def test_a_users_per_head_table_is_declared_by_its_head_axis() -> None:
    torch.manual_seed(0)
    model, x = TableNet().eval(), torch.randn(2, 5, 4)
    with pytest.raises(gpd.ExpansionError, match="pair_bias"):
        gpd.expand(model, ratio=2, example_input=x)  # undeclared: no axis of a channel count
    declared = ExpandHeadTensors(HeadTensors({"pair_bias": 0}, head_counts=("heads",)))
    with RULES.override(TableAttention, declared):
        expanded = gpd.expand(model, ratio=2, example_input=x).eval()
    assert expanded.dynamic.attention.heads == 6 and expanded.dynamic.attention.pair_bias.shape == (6, 5, 5)
    other = torch.randn(3, 5, 4)
    assert rel_err(_logits(expanded.forward_dynamic, other), _logits(model, other)) <= 1e-5
    with RULES.override(TableAttention, declared), pytest.raises(gpd.ExpansionError, match="split attention heads"):
        gpd.expand(model, ratio=1.5, example_input=x)


def test_an_undeclared_parameter_of_a_per_head_module_is_refused_by_name() -> None:
    torch.manual_seed(0)
    model, x = TableNet().eval(), torch.randn(2, 5, 4)
    model.attention.extra = nn.Parameter(torch.ones(3))
    declared = ExpandHeadTensors(HeadTensors({"pair_bias": 0}, head_counts=("heads",)))
    with RULES.override(TableAttention, declared), pytest.raises(gpd.ExpansionError, match="attention.*extra"):
        gpd.expand(model, ratio=2, example_input=x)


def test_importing_gpd_does_not_import_transformers() -> None:
    code = "import sys, gpd, gpd.expansion; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
