"""Per-layer SGD steps of the student and of D, predicted by hand and measured, kind by kind.

The factors below are derived on paper (docs/method.md, "Per-layer steps"), not taken
from the library: in the paper's parameterisation D's activations are h/r per copy, so
a conv/linear stores W/r on every block whose *output* is expanded, its bias b/r, the
layer reading the image W/r, the layer writing the logits W tiled, tokens and position
embeddings /r, and everything that is scaled back around its layer (grouped convs,
norms, layer scale) unchanged. A tensor stored ``a`` times ours gets ``1/a**2`` times
our SGD step, and the student's view of a tensor stored ``c`` times its own value gets
``c**2`` times the plain student's step.

One SGD step in float64 (no momentum, no weight decay, no clipping): the measured move
of every student parameter (student's CE alone) and of every D parameter (D's CE alone)
must equal ``-lr * factor * grad`` with the gradient taken on an unexpanded student, or
on a plain copy of D.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F

import gpd
from gpd.sharing.steps import clip_grad_norm_
from helpers import dynamic_factor, rel_err, student_factor

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LR = 0.05


class KindsCNN(nn.Module):
    """Every CNN kind: a stem with bias, a middle conv with bias, a depthwise conv with bias, BN, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(8)
        self.mid = nn.Conv2d(8, 8, 3, padding=1, bias=True)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=True)
        self.bn2 = nn.BatchNorm2d(8)
        self.prelu = nn.PReLU(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(torch.relu(self.stem(x)))  # biases before a nonlinearity, so that they get gradients
        x = x + torch.relu(self.mid(x))
        x = self.bn2(self.prelu(self.dw(x)))
        return self.head(x.mean((2, 3)))


def cnn_kind(name: str) -> str:
    return {
        "stem.weight": "stem", "stem.bias": "expanded_bias", "mid.weight": "middle", "mid.bias": "expanded_bias",
        "dw.weight": "grouped", "dw.bias": "grouped", "bn1.weight": "norm", "bn1.bias": "norm",
        "bn2.weight": "norm", "bn2.bias": "norm", "prelu.weight": "norm", "head.weight": "head", "head.bias": "head_bias",
    }[name]  # fmt: skip


def vit_kind(name: str) -> str:
    if name.startswith("patch_embed.proj."):
        return "stem" if name.endswith("weight") else "expanded_bias"
    if name in ("cls_token", "pos_embed"):
        return "token"
    if name.startswith("head."):
        return "head" if name.endswith("weight") else "head_bias"
    if ".ls" in name:
        return "layer_scale"
    if "norm" in name:
        return "norm"
    return "middle" if name.endswith("weight") else "expanded_bias"  # qkv, proj, fc1, fc2


def tiny_vit() -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2,
        num_classes=5, init_values=0.5, qkv_bias=True,
    )  # fmt: skip


def make(kind: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, object]:
    torch.manual_seed(0)
    if kind == "resnet":
        from gpd.models import create_model

        model = create_model("resnet8", num_classes=5, in_chans=3).double()
    else:
        model = (KindsCNN() if kind == "cnn" else tiny_vit()).double()
    with torch.no_grad():  # non-trivial values everywhere (timm zero-inits tokens and biases)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (4,))
    return model, x, y, cnn_kind if kind == "cnn" else vit_kind


def expand(student: nn.Module, r: int, rule: str, x: torch.Tensor) -> gpd.GPDModel:
    return gpd.expand(student, r, example_input=x, step_rule=rule).train()


@pytest.mark.parametrize("rule", ["paper", "plain"])
@pytest.mark.parametrize("r", [2, 3])
@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_student_step_per_kind(arch: str, r: int, rule: str) -> None:
    student, x, y, kind_of = make(arch)
    student.train()
    plain = copy.deepcopy(student)
    F.cross_entropy(plain(x), y).backward()
    model = expand(student, r, rule, x)
    before = {n: p.detach().clone() for n, p in model.student_parameters().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    F.cross_entropy(model.forward_student(x), y).backward()
    optimizer.step()
    after = model.student_parameters()
    kinds = set()
    for name, param in plain.named_parameters():
        kinds.add(kind_of(name))
        predicted = -LR * student_factor(kind_of(name), r, rule) * param.grad
        assert rel_err(after[name] - before[name], predicted) <= 1e-9, (name, kind_of(name))
    expected = {"stem", "middle", "expanded_bias", "head", "head_bias", "norm"}
    expected |= {"grouped"} if arch == "cnn" else {"token", "layer_scale"}
    assert kinds == expected


@pytest.mark.parametrize("rule", ["paper", "plain"])
@pytest.mark.parametrize("r", [2, 3])
@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_dynamic_teacher_step_per_kind(arch: str, r: int, rule: str) -> None:
    student, x, y, kind_of = make(arch)
    model = expand(student, r, rule, x)
    plain_d = copy.deepcopy(model.dynamic)  # a plain wide network: deepcopy of the module carries no hooks
    F.cross_entropy(plain_d(x), y).backward()
    before = {n: p.detach().clone() for n, p in model.dynamic.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    F.cross_entropy(model.forward_dynamic(x), y).backward()
    optimizer.step()
    for name, param in model.dynamic.named_parameters():
        predicted = -LR * dynamic_factor(kind_of(name), r, rule) * dict(plain_d.named_parameters())[name].grad
        assert rel_err(param.detach() - before[name], predicted) <= 1e-9, (name, kind_of(name))


def test_paper_steps_survive_copies_pickling_and_device_moves() -> None:
    student, x, y, _kind_of = make("cnn")
    model = expand(student, 2, "paper", x)
    for other in (
        copy.deepcopy(model),
        pickle.loads(pickle.dumps(model)),
        copy.deepcopy(model).to(memory_format=torch.channels_last),
    ):
        other.zero_grad()
        F.cross_entropy(other.forward_dynamic(x), y).backward()
        model.zero_grad()
        F.cross_entropy(model.forward_dynamic(x), y).backward()
        for (name, a), (_, b) in zip(model.dynamic.named_parameters(), other.dynamic.named_parameters()):
            assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-15), name


def test_clipping_measures_the_papers_gradient_norm() -> None:
    """The clipped norm is that of the paper's gradients: the plain gradient of each of D's
    tensors divided by its paper scale (stem r times larger, head r times smaller)."""
    r = 2
    student, x, y, kind_of = make("cnn")
    model = expand(student, r, "paper", x)
    plain_d = copy.deepcopy(model.dynamic)
    F.cross_entropy(plain_d(x), y).backward()
    scale = {"stem": 1 / r, "expanded_bias": 1 / r, "head": r}
    papers = [p.grad / scale.get(kind_of(n), 1.0) for n, p in plain_d.named_parameters()]
    expected_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in papers]))
    F.cross_entropy(model.forward_dynamic(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.dynamic.named_parameters()}
    max_norm = float(expected_norm) / 3
    norm = clip_grad_norm_(model.parameters(), max_norm, model.grad_scales())
    assert abs(float(norm) - float(expected_norm)) <= 1e-9 * float(expected_norm)
    coefficient = max_norm / (float(expected_norm) + 1e-6)
    for name, param in model.dynamic.named_parameters():
        assert torch.allclose(param.grad, grads[name] * coefficient, rtol=1e-12, atol=0), name


def test_adaptive_optimizers_get_the_papers_step_through_lr_scale() -> None:
    """AdamW's first step is -lr * sign(grad) in the paper's coordinates (up to eps), i.e.
    -lr / a * sign(grad) here: the param groups carry lr_scale = 1/a."""
    r = 2
    student, x, y, kind_of = make("cnn")
    distiller = gpd.Distiller(student, ratio=r, example_input=x, noise_std=0.0)
    groups = distiller.param_groups(0.0, adaptive=True)
    for group in groups:
        group["lr"] = LR * group["lr_scale"]
    optimizer = torch.optim.AdamW(groups, lr=LR, weight_decay=0.0, eps=1e-30)
    d = distiller.network.dynamic
    before = {n: p.detach().clone() for n, p in d.named_parameters()}
    F.cross_entropy(distiller.dynamic_logits(x), y).backward()
    grads = {n: p.grad.clone() for n, p in d.named_parameters()}
    optimizer.step()
    scale = {"stem": 1 / r, "expanded_bias": 1 / r, "head": r}
    for name, param in d.named_parameters():
        predicted = -LR / scale.get(kind_of(name), 1.0) * torch.sign(grads[name])
        assert rel_err(param.detach() - before[name], predicted) <= 1e-9, name


@pytest.mark.parametrize("arch", ["cnn", "resnet", "vit"])
def test_weight_decay_groups_follow_the_students_recipe(arch: str) -> None:
    """D's tensors get weight decay exactly where timm's rules give the student's tensors
    weight decay: no decay for 1-d tensors, biases and the student's no_weight_decay() names."""
    from timm.optim import param_groups_weight_decay

    student, x, _y, _ = make(arch)
    student = student.float()
    nwd = student.no_weight_decay() if hasattr(student, "no_weight_decay") else ()
    reference = param_groups_weight_decay(student, 1e-2, no_weight_decay_list=nwd)
    names = {id(p): n for n, p in student.named_parameters()}
    decayed = {names[id(p)] for g in reference if g["weight_decay"] for p in g["params"]}
    distiller = gpd.Distiller(student, ratio=2, example_input=x.float())
    d_names = {id(p): n for n, p in distiller.network.dynamic.named_parameters()}
    groups = distiller.param_groups(1e-2)
    got = {d_names[id(p)] for g in groups if g["weight_decay"] for p in g["params"]}
    assert got == decayed
    assert sum(len(g["params"]) for g in groups) == len(list(distiller.parameters()))
    if arch == "vit":
        assert "pos_embed" not in got and "cls_token" not in got


def copies(weight: torch.Tensor, r: int) -> list[torch.Tensor]:
    """The r output-channel copies of a tiled weight (input block 0)."""
    out, inp = weight.shape[0] // r, weight.shape[1] // r
    return [weight[i * out : (i + 1) * out, :inp].detach().clone() for i in range(r)]


@pytest.mark.parametrize("r", [3, 4])
def test_default_noise_lets_every_pair_of_copies_diverge(r: int) -> None:
    """Without noise, D's copies 1..r-1 get identical updates for ever (only copy 0 is moved by
    the student's loss); with the Distiller's default noise every pair of copies moves differently."""
    torch.manual_seed(0)
    student = KindsCNN()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))

    def train(noise: float | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        kwargs = {} if noise is None else {"noise_std": noise}
        distiller = gpd.Distiller(copy.deepcopy(student), ratio=r, example_input=x, **kwargs).train()
        optimizer = torch.optim.SGD(distiller.param_groups(0.0), lr=0.1, momentum=0.9)
        start = copies(distiller.network.dynamic.mid.weight, r)
        for _ in range(3):
            optimizer.zero_grad()
            distiller(x, y).loss.backward()
            optimizer.step()
        moved = [c - s for c, s in zip(copies(distiller.network.dynamic.mid.weight, r), start)]
        return start, moved

    _, moved = train(noise=0.0)
    for i in range(1, r):
        assert torch.equal(moved[1], moved[i])  # the defect the noise removes
    start, moved = train(noise=None)  # the default
    for i in range(r):
        for j in range(i + 1, r):
            assert not torch.equal(start[i], start[j])
            assert (moved[i] - moved[j]).abs().max() > 1e-3 * moved[i].abs().max(), (i, j)


def test_noise_leaves_the_student_exact_and_is_reported() -> None:
    student, x, _, _ = make("cnn")
    student = student.float().eval()
    x = x.float()
    distiller = gpd.Distiller(student, ratio=2, example_input=x).eval()
    report = distiller.network.report
    assert report.noise_std == 1e-3 and 0 < report.noise_error < 1e-2
    assert report.dynamic_error < 1e-5  # verified before the noise
    with torch.no_grad():
        assert torch.equal(distiller.student_logits(x), student(x))


def test_distiller_clips_as_the_trainer_does() -> None:
    student, x, y, _ = make("cnn")
    distiller = gpd.Distiller(student.float(), ratio=2, example_input=x.float())
    distiller(x.float(), y).loss.backward()
    grads = [p.grad.clone() for p in distiller.parameters()]
    expected = clip_grad_norm_(list(distiller.parameters()), 1e9, distiller.network.grad_scales())  # measures only
    norm = distiller.clip_grad_norm_(0.5)
    assert torch.allclose(norm, expected)
    for p, g in zip(distiller.parameters(), grads):
        assert torch.allclose(p.grad, g * 0.5 / (float(norm) + 1e-6), rtol=1e-5, atol=0)


def test_param_groups_match_timms_order_so_older_checkpoints_resume() -> None:
    """For a CNN, the groups are timm's own (no decay first), so an optimizer state saved
    before gpd built its groups (timm's create_optimizer_v2 on the Distiller) still loads."""
    from timm.optim import create_optimizer_v2

    student, x, _, _ = make("cnn")
    distiller = gpd.Distiller(student.float(), ratio=2, example_input=x.float())
    old = create_optimizer_v2(distiller, opt="sgd", lr=0.1, weight_decay=5e-4, momentum=0.9)
    new = create_optimizer_v2(distiller.param_groups(5e-4), opt="sgd", lr=0.1, weight_decay=5e-4, momentum=0.9)
    assert [[id(p) for p in g["params"]] for g in new.param_groups] == [
        [id(p) for p in g["params"]] for g in old.param_groups
    ]
    new.load_state_dict(old.state_dict())


def test_trainer_gives_adaptive_optimizers_the_papers_lr_scale(tmp_path) -> None:
    """With AdamW the trainer's groups carry lr_scale = 1/a, and timm's scheduler applies it."""
    from gpd.config import load_config
    from gpd.training.run_dir import prepare_run_dir
    from gpd.training.trainer import Trainer

    cfg = load_config(
        None, ["train.optimizer=adamw", "train.lr=0.001", "train.warmup_epochs=0", f"output_dir={tmp_path / 'run'}"]
    )
    trainer = Trainer(cfg, prepare_run_dir(cfg), dry_run=True)
    d = trainer.distiller.network.dynamic
    group_of = {id(p): g for g in trainer.loop.optimizer.param_groups for p in g["params"]}
    stem, head, middle = d.conv1.weight, d.fc.weight, d.layer1[0].conv1.weight
    assert group_of[id(stem)]["lr"] == pytest.approx(0.001 * 2)  # a = 1/r
    assert group_of[id(head)]["lr"] == pytest.approx(0.001 / 2)  # a = r
    assert group_of[id(middle)]["lr"] == pytest.approx(0.001)
    assert group_of[id(stem)]["weight_decay"] == pytest.approx(cfg.train.weight_decay / 2)
    sgd_cfg = load_config(None, [f"output_dir={tmp_path / 'sgd'}"])
    sgd = Trainer(sgd_cfg, prepare_run_dir(sgd_cfg), dry_run=True)
    assert all("lr_scale" not in g for g in sgd.loop.optimizer.param_groups)  # SGD: the gradient hooks do it


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["paper", "plain"])
@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_compiled_step_has_the_same_gradients(arch: str, rule: str) -> None:
    """torch.compile of the whole objective gives D's tensors the eager gradients, hooks and
    the student view's scaled backward included (a narrow over a whole axis once lost the scale)."""
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on CPU needs a C compiler")
    student, x, y, _ = make(arch)
    student, x = student.float(), x.float()
    eager = gpd.Distiller(student, ratio=2, example_input=x, noise_std=0.0, step_rule=rule).train()
    compiled = copy.deepcopy(eager)
    eager(x, y).loss.backward()
    torch.compile(compiled)(x, y).loss.backward()
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        assert rel_err(b.grad, a.grad) <= 1e-4, name


# ------------------------------------------------------- decay_norms_and_biases


def decayed_names(distiller: gpd.Distiller, groups: list[dict]) -> dict[str, float]:
    """Each trainable tensor's weight decay, by its name in the Distiller (D's, the student's, heads)."""
    names = {id(p): n for n, p in distiller.named_parameters()}
    return {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("arch", ["cnn", "resnet", "vit"])
def test_decay_norms_and_biases_decays_every_tensor_of_d_and_the_student(arch: str, share: bool) -> None:
    """The paper's CNN recipes: every tensor of D (and of a separate student) decays, 1-D ones
    included; the student's no_weight_decay() names still do not."""
    student, x, _y, _ = make(arch)
    nwd = set(student.no_weight_decay()) if hasattr(student, "no_weight_decay") else set()
    distiller = gpd.Distiller(student.float(), ratio=2, example_input=x.float(), share_parameters=share)
    decay = decayed_names(distiller, distiller.param_groups(1e-2, decay_norms_and_biases=True))
    assert len(decay) == len([p for p in distiller.parameters() if p.requires_grad])
    exempt = {n for n in decay if n.split(".", 2)[-1] in nwd}  # network.dynamic.<name> / network.student.<name>
    assert {n for n, wd in decay.items() if wd == 0.0} == exempt
    assert all(decay[n] == 1e-2 for n in decay if n not in exempt)
    one_d = {n for n, p in distiller.named_parameters() if p.ndim <= 1}
    assert one_d and one_d.isdisjoint(exempt)  # BatchNorm/LayerNorm weights and biases, conv/linear biases
    if arch == "vit":
        assert exempt and all(n.endswith(("pos_embed", "cls_token")) for n in exempt)
    if not share:
        assert any(n.startswith("network.student.") and decay[n] for n in one_d)
    default = distiller.param_groups(1e-2)  # timm's rule, unchanged: 1-D tensors and biases undecayed
    assert {n for n, wd in decayed_names(distiller, default).items() if wd} == {
        n for n in decay if n not in exempt | one_d and not n.endswith(".bias")
    }


def test_without_the_key_the_groups_are_as_before() -> None:
    """The default groups, pinned: no-decay group first (1-D tensors and biases), then the rest;
    decay_norms_and_biases=False gives the very same groups."""
    student, x, _, _ = make("cnn")
    distiller = gpd.Distiller(student.float(), ratio=2, example_input=x.float())
    groups = distiller.param_groups(5e-4)
    prefix = "network.dynamic."
    names = {id(p): n.removeprefix(prefix) for n, p in distiller.named_parameters()}
    assert [(g["weight_decay"], [names[id(p)] for p in g["params"]]) for g in groups] == [
        (0.0, ["stem.bias", "bn1.weight", "bn1.bias", "mid.bias", "dw.bias", "bn2.weight", "bn2.bias",
               "prelu.weight", "head.bias"]),
        (5e-4, ["stem.weight", "mid.weight", "dw.weight", "head.weight"]),
    ]  # fmt: skip
    explicit = distiller.param_groups(5e-4, decay_norms_and_biases=False)
    assert [[id(p) for p in g["params"]] for g in explicit] == [[id(p) for p in g["params"]] for g in groups]
    assert [g["weight_decay"] for g in explicit] == [g["weight_decay"] for g in groups]
    one = distiller.param_groups(5e-4, decay_norms_and_biases=True)
    assert len(one) == 1 and one[0]["weight_decay"] == 5e-4  # every tensor in one group, in the model's order
    assert [names[id(p)] for p in one[0]["params"]] == [names[id(p)] for _, p in distiller.named_parameters()]


def test_adaptive_groups_scale_the_decay_of_newly_decayed_tensors() -> None:
    """AdamW with decay on every tensor: one step moves each of D's tensors as the paper's AdamW does
    in its coordinates, theta * (1 - lr * wd) - lr / a * sign(grad), the biases stored /r included
    (lr_scale = 1/a, decay * a: gpd.sharing.steps.adaptive_group_scales)."""
    r, wd = 2, 0.1
    student, x, y, kind_of = make("cnn")
    distiller = gpd.Distiller(student, ratio=r, example_input=x, noise_std=0.0)
    groups = distiller.param_groups(wd, adaptive=True, decay_norms_and_biases=True)
    scale = {"stem": 1 / r, "expanded_bias": 1 / r, "head": r}
    d = distiller.network.dynamic
    group_of = {id(p): g for g in groups for p in g["params"]}
    for name, param in d.named_parameters():
        a = scale.get(kind_of(name), 1.0)
        assert group_of[id(param)]["weight_decay"] == pytest.approx(wd * a), name
        assert group_of[id(param)]["lr_scale"] == pytest.approx(1 / a), name
    for group in groups:
        group["lr"] = LR * group["lr_scale"]
    optimizer = torch.optim.AdamW(groups, lr=LR, eps=1e-30)
    before = {n: p.detach().clone() for n, p in d.named_parameters()}
    F.cross_entropy(distiller.dynamic_logits(x), y).backward()
    grads = {n: p.grad.clone() for n, p in d.named_parameters()}
    optimizer.step()
    for name, param in d.named_parameters():
        a = scale.get(kind_of(name), 1.0)
        predicted = before[name] * (1 - LR * wd) - LR / a * torch.sign(grads[name])
        assert rel_err(param.detach() - before[name], predicted - before[name]) <= 1e-9, name
    assert {kind_of(n) for n, p in d.named_parameters() if p.ndim == 1} >= {"expanded_bias", "norm", "head_bias"}


def test_trainer_takes_the_key_from_the_config(tmp_path) -> None:
    from gpd.config import load_config
    from gpd.training.run_dir import prepare_run_dir
    from gpd.training.trainer import Trainer

    def decays(*overrides: str) -> list[float]:
        cfg = load_config(None, [*overrides, f"output_dir={tmp_path / str(len(overrides))}"])
        trainer = Trainer(cfg, prepare_run_dir(cfg), dry_run=True)
        return [g["weight_decay"] for g in trainer.loop.optimizer.param_groups]

    assert decays("train.decay_norms_and_biases=true") == [5e-4]
    assert decays() == [0.0, 5e-4]
