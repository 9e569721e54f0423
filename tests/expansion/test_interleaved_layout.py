"""The interleaved layout: D for models whose forward() splits or slices channels.

A split of a tiled tensor ``[a, b, a, b]`` in halves gives D ``[a, b]`` twice, where
the student has ``a`` and ``b``: no weight permutation can repair that. With each
channel's copies side by side (``[a, a, b, b]``) D's pieces are copies of the
student's pieces. ``gpd.expand`` picks that layout when the tiled one is refused
(docs/method.md, "Channel layouts"); grouped convs then keep the student's group count
with r-times-wider groups. Here: the maps, exactness of D, the student view and the
export, the refusals, and the per-layer SGD step of every kind (docs/method.md,
"Per-layer steps"), predicted by hand and measured.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gpd
from gpd.channel_maps import WidthPlan
from gpd.expansion.generic import register_channel_attributes
from helpers import rel_err

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class SplitCNN(nn.Module):
    """A stem, a channel split, a grouped conv on one half (two groups), a concat, a 1x1 conv, a head."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(width)
        self.group = nn.Conv2d(width // 2, width // 2, 3, padding=1, groups=2, bias=True)
        self.mid = nn.Conv2d(width, width, 1, bias=True)
        self.head = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(torch.relu(self.stem(x)))  # the bias before a nonlinearity, so that it gets a gradient
        a, b = x.chunk(2, 1)
        x = torch.cat([a, torch.relu(self.group(b))], 1)
        x = torch.relu(self.mid(x))
        return self.head(x.mean((2, 3)))


class SizedSplit(nn.Module):
    """Splits by sizes it holds (like timm's MixedConv2d): a list attribute D must hold at its own width."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.sizes = [4, 6, 2]
        self.convs = nn.ModuleList(nn.Conv2d(s, s, 3, padding=1, groups=s) for s in self.sizes)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(torch.relu(self.stem(x)), self.sizes, 1)
        x = torch.cat([conv(p) for conv, p in zip(self.convs, parts)], 1)
        return self.head(x.mean((2, 3)))


register_channel_attributes(SizedSplit, ("sizes",))


def randomized(model: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    model = model.to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_interleaved_maps_keep_copies_side_by_side() -> None:
    two = WidthPlan(2, "interleaved").map(3)
    assert two.source.tolist() == [0, 0, 1, 1, 2, 2] and two.student_index.tolist() == [0, 2, 4]
    three = WidthPlan(3, "interleaved").map(2)
    assert three.source.tolist() == [0, 0, 0, 1, 1, 1] and three.student_index.tolist() == [0, 3]
    uneven = WidthPlan(1.5, "interleaved").map(4)  # the first channels get the extra copy, as when tiled
    assert uneven.source.tolist() == [0, 0, 1, 1, 2, 3] and uneven.counts.tolist() == [2, 2, 1, 1]
    assert WidthPlan(2).map(3).source.tolist() == [0, 1, 2, 0, 1, 2]  # tiled stays the default
    with pytest.raises(gpd.ArgumentError, match="layout must be one of"):
        WidthPlan(2, "shuffled")  # type: ignore[arg-type]


@pytest.mark.parametrize("r", [2, 3])
def test_a_split_model_is_refused_tiled_and_exact_interleaved(r: int) -> None:
    student = randomized(SplitCNN())
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(gpd.ExpansionError, match="does not compute the student's function"):
        gpd.expand(student, r, example_input=x, layout="tiled")
    model = gpd.expand(student, r, example_input=x)  # auto: tiled is refused, interleaved is exact
    assert model.report.layout == "interleaved"
    assert model.dynamic.group.groups == 2 and model.dynamic.group.in_channels == 4 * r  # r-times-wider groups
    fresh = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = student(fresh)
        assert rel_err(model.forward_dynamic(fresh), expected) < 1e-12
        assert rel_err(model.forward_student(fresh), expected) < 1e-12
        exported = SplitCNN().to(torch.float64).eval()
        exported.load_state_dict(model.export_student().state_dict(), strict=True)
        assert rel_err(exported(fresh), expected) < 1e-12


def test_split_sizes_held_by_the_module_are_resized_for_d() -> None:
    student = randomized(SizedSplit())
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    model = gpd.expand(student, 2, example_input=x)
    assert model.report.layout == "interleaved" and model.dynamic.sizes == [8, 12, 4] and student.sizes == [4, 6, 2]
    with torch.no_grad():
        assert rel_err(model.forward_dynamic(x), student(x)) < 1e-12
        assert rel_err(model.forward_student(x), student(x)) < 1e-12


def test_a_tiled_model_stays_tiled_and_the_layout_can_be_forced() -> None:
    student = randomized(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 5)))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    assert gpd.expand(student, 2, example_input=x).report.layout == "tiled"
    forced = gpd.expand(student, 2, example_input=x, layout="interleaved")
    assert forced.report.layout == "interleaved"
    with torch.no_grad():
        assert rel_err(forced.forward_student(x), student(x)) < 1e-12
    with pytest.raises(gpd.ArgumentError, match="layout must be 'auto'"):
        gpd.expand(student, 2, example_input=x, layout="diagonal")


def test_when_both_layouts_fail_the_refusal_names_both() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3)
            self.fc = nn.Linear(3, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x).mean((2, 3))
            return self.fc(h[:, :3] * h[:, 3:])  # a slice at a count no attribute declares

    with pytest.raises(gpd.ExpansionError) as info:
        gpd.expand(randomized(Odd()), 2, example_input=torch.randn(2, 3, 6, 6, dtype=torch.float64))
    message = str(info.value)
    assert "\n" not in message and "the interleaved layout is refused too" in message


# ------------------------------------------------------------------ per-layer steps

LR = 0.05
KINDS = {
    "stem.weight": "stem", "stem.bias": "expanded_bias", "bn1.weight": "norm", "bn1.bias": "norm",
    "group.weight": "wide_grouped", "group.bias": "expanded_bias", "mid.weight": "middle",
    "mid.bias": "expanded_bias", "head.weight": "head", "head.bias": "head_bias",
}  # fmt: skip


def student_factor(kind: str, r: int, rule: str) -> float:
    """The student's step relative to the plain student's, derived on paper.

    A wide group divides each input copy by r as an ungrouped conv does, so its
    student weight is r times D's block: its gradient reaches D times r and the
    student's value moves r * r times the plain step, like an ungrouped middle conv."""
    if rule == "plain":
        return 1.0
    return {"stem": r * r, "middle": r * r, "wide_grouped": r * r, "expanded_bias": r * r}.get(kind, 1.0)


def dynamic_factor(kind: str, r: int, rule: str) -> float:
    """D's step relative to the plain wide network's, derived on paper (a wide group: paper scale 1)."""
    if rule == "plain":
        return 1.0
    return {"stem": r * r, "expanded_bias": r * r, "head": 1 / (r * r)}.get(kind, 1.0)


@pytest.mark.parametrize("rule", ["paper", "plain"])
@pytest.mark.parametrize("r", [2, 3])
def test_student_and_dynamic_teacher_steps_per_kind(r: int, rule: str) -> None:
    student = randomized(SplitCNN()).train()
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (4,))
    plain = copy.deepcopy(student)
    F.cross_entropy(plain(x), y).backward()
    model = gpd.expand(student, r, example_input=x, step_rule=rule).train()
    assert model.report.layout == "interleaved"
    before = {n: p.detach().clone() for n, p in model.student_parameters().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    F.cross_entropy(model.forward_student(x), y).backward()
    optimizer.step()
    after = model.student_parameters()
    for name, param in plain.named_parameters():
        predicted = -LR * student_factor(KINDS[name], r, rule) * param.grad
        assert rel_err(after[name] - before[name], predicted) <= 1e-9, (name, KINDS[name])

    model = gpd.expand(randomized(SplitCNN()).train(), r, example_input=x, step_rule=rule).train()
    plain_d = copy.deepcopy(model.dynamic)  # the plain wide network: a deepcopy of the module carries no hooks
    F.cross_entropy(plain_d(x), y).backward()
    before = {n: p.detach().clone() for n, p in model.dynamic.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    F.cross_entropy(model.forward_dynamic(x), y).backward()
    optimizer.step()
    grads = dict(plain_d.named_parameters())
    for name, param in model.dynamic.named_parameters():
        predicted = -LR * dynamic_factor(KINDS[name], r, rule) * grads[name].grad
        assert rel_err(param.detach() - before[name], predicted) <= 1e-9, (name, KINDS[name])


def test_sharing_holds_after_a_step() -> None:
    """After an SGD step on D the student view is still D's slice: exported == view."""
    student = randomized(SplitCNN()).train()
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (4,))
    model = gpd.expand(student, 2, example_input=x).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    (F.cross_entropy(model.forward_dynamic(x), y) + F.cross_entropy(model.forward_student(x), y)).backward()
    optimizer.step()
    model.eval()
    exported = SplitCNN().to(torch.float64).eval()
    exported.load_state_dict(model.export_student().state_dict(), strict=True)
    with torch.no_grad():
        assert rel_err(exported(x), model.forward_student(x)) < 1e-12
        assert rel_err(model.forward_student(x), student.eval()(x)) > 1e-4  # the step moved the student


def test_the_config_key_and_the_distiller_choose_the_layout() -> None:
    from gpd.config import load_config
    from gpd.errors import ConfigError

    assert load_config(None, ["gpd.layout=interleaved"]).gpd.layout == "interleaved"
    with pytest.raises(ConfigError, match="gpd.layout must be auto, tiled or interleaved"):
        load_config(None, ["gpd.layout=diagonal"])
    distiller = gpd.Distiller(SplitCNN(), None, "none", input_size=(3, 8, 8), noise_std=0.0)
    assert distiller.network.report.layout == "interleaved"
    with pytest.raises(gpd.ExpansionError):
        gpd.Distiller(SplitCNN(), None, "none", input_size=(3, 8, 8), layout="tiled")


# ------------------------------------------------------------- heads and fused halves


def test_head_blocks_copy_whole_heads_when_interleaved() -> None:
    heads = WidthPlan(2, "interleaved").map(6, block=3)  # two heads of three channels
    assert heads.source.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5] and heads.student_index.tolist() == [
        0,
        1,
        2,
        6,
        7,
        8,
    ]
    assert WidthPlan(2).map(6, block=3).source.tolist() == [0, 1, 2, 3, 4, 5] * 2  # tiled: whole heads anyway
    with pytest.raises(gpd.ExpansionError, match="not a whole number of blocks"):
        WidthPlan(1.25, "interleaved").map(8, block=4)  # 10 channels: two and a half heads


class SplitAttention(nn.Module):
    """Tokens whose channels are split and re-joined, then timm's multi-head attention (two heads)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        from timm.layers.attention import Attention

        self.embed = nn.Linear(3, dim)
        self.mix = nn.Linear(dim // 2, dim // 2)
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=2, qkv_bias=True)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.flatten(2).transpose(1, 2))
        a, b = tokens.chunk(2, -1)
        tokens = torch.cat([a, torch.relu(self.mix(b))], -1)
        tokens = tokens + self.attn(self.norm(tokens))
        return self.head(tokens.mean(1))


ATTENTION_KINDS = {
    "embed.weight": "stem", "embed.bias": "expanded_bias", "mix.weight": "middle", "mix.bias": "expanded_bias",
    "norm.weight": "norm", "norm.bias": "norm", "attn.qkv.weight": "middle", "attn.qkv.bias": "expanded_bias",
    "attn.proj.weight": "middle", "attn.proj.bias": "expanded_bias", "head.weight": "head", "head.bias": "head_bias",
}  # fmt: skip


@pytest.mark.parametrize("r", [2, 3])
def test_attention_after_a_split_copies_whole_heads_and_steps_as_tiled(r: int) -> None:
    student = randomized(SplitAttention()).train()
    x, y = torch.randn(4, 3, 4, 4, dtype=torch.float64), torch.randint(0, 5, (4,))
    model = gpd.expand(student, r, example_input=x, noise_std=0.0).train()
    assert model.report.layout == "interleaved" and model.dynamic.attn.num_heads == 2 * r
    with torch.no_grad():
        fresh = torch.randn(3, 3, 4, 4, dtype=torch.float64)
        assert rel_err(model.forward_dynamic(fresh), student(fresh)) < 1e-12
    plain = copy.deepcopy(student)
    F.cross_entropy(plain(x), y).backward()
    before = {n: p.detach().clone() for n, p in model.student_parameters().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    F.cross_entropy(model.forward_student(x), y).backward()
    optimizer.step()
    after = model.student_parameters()
    for name, param in plain.named_parameters():
        predicted = -LR * student_factor(ATTENTION_KINDS[name], r, "paper") * param.grad
        assert rel_err(after[name] - before[name], predicted) <= 1e-9, name


def test_glu_mlp_halves_are_expanded_like_fused_segments() -> None:
    """timm's GluMlp chunks fc1's output in [x, gate]: each half is tiled on its own (``[x, x, g, g]``)."""
    from timm.layers.mlp import GluMlp

    student = randomized(nn.Sequential(nn.Linear(6, 8), GluMlp(8, 12, act_layer=nn.SiLU), nn.Linear(8, 3)))
    x = torch.randn(5, 6, dtype=torch.float64)
    model = gpd.expand(student, 2, example_input=x, noise_std=0.0)
    assert model.report.layout == "tiled" and model.dynamic[1].fc1.out_features == 24
    with torch.no_grad():
        assert rel_err(model.forward_dynamic(x), student(x)) < 1e-12
        assert rel_err(model.forward_student(x), student(x)) < 1e-12
