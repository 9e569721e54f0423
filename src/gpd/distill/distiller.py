"""The GPD objective as a module: ``forward(x, y)`` returns its named loss terms.

Following the distiller contract of mdistiller, a method returns its losses as a dict
of weighted scalars; the training loop only sums them. The CLI's trainer and a
user's own loop use this same object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from gpd.choices import BranchInit, BranchKind, KDMethodName, LayoutChoice
from gpd.deprecated import renamed_kwargs, upgrade_state_keys, warn_renamed
from gpd.distill.kd_methods import KDLoss, build_kd_method, kd_method_class
from gpd.distill.method import KDMethod, StaticTargets, TapRole, hard_labels
from gpd.distill.pair import DynamicPair, UnsharedPair, trained_student_module
from gpd.distill.param_groups import decay_groups
from gpd.errors import ConfigError
from gpd.expansion import expand
from gpd.expansion.expand import with_branches
from gpd.expansion.rules import RULES
from gpd.gpd_model import GPDModel
from gpd.losses import sce
from gpd.sharing.steps import clip_grad_norm_

if TYPE_CHECKING:
    from gpd.config.schema import Config

__all__ = ["Distiller", "DistillerOutput", "StaticTargets", "freeze", "hard_labels"]


class DistillerOutput(NamedTuple):
    """The loss terms of a batch and the student's logits (``with_student_logits=True``).

    A tuple, so ``losses, logits = distiller(x, y, with_student_logits=True)`` unpacks it."""

    losses: dict[str, torch.Tensor]
    student_logits: torch.Tensor


def freeze(teacher: nn.Module) -> nn.Module:
    """A static teacher: eval mode (BatchNorm statistics fixed) and no gradients."""
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


class Distiller(nn.Module):
    """Train a student with GPD (or alone, as the baseline) through one loss dict.

    With ``dynamic_teacher=True`` the student is expanded into a dynamic teacher D of
    width ``ratio`` that shares its parameters, and the loss is

        CE(z_D, y) + CE(z_S, y) + sce_weight * SCE(z_S || sg(z_D))

    (the GPD paper (section 3), scratch and fine-tuning scenarios). With a frozen static
    ``teacher`` and a KD method (``kd="kd"``, ``"dkd"`` or ``"reviewkd"``, options in
    ``kd_options``; or a :class:`~gpd.distill.method.KDMethod` object, or a plain logit loss
    ``(z, z_T, y, epoch) -> loss``) the method's loss against the static teacher is added for
    D and for the student; ReviewKD gives the student and D each a fusion head of its own
    widths (``review_heads``, where every method's heads live). :meth:`from_config` builds
    the Distiller of a run config.
    With ``dynamic_teacher=False`` the student trains alone: CE, plus KD if a static
    teacher is given (the baselines).

    ``parameters()`` are the trainable parameters: D's when GPD is on, the student's
    otherwise. ``share_parameters=False`` (the ablation ``gpd.share=false``) builds D
    the same way, by Inverse Reparameterization, but then gives D and the student
    separate parameters (:class:`~gpd.distill.pair.UnsharedPair`): both train, tied
    only by the loss; ``parameters()`` are then D's and the student's. ``branches="orepa"`` trains every 3x3 stride-1 convolution as a
    six-branch block (Channel-Branch Reparameterization). ``compensate_step=True``
    removes the r² effective SGD step that sharing gives the student's weights stored
    divided by r and gives D the plain wide network's steps; by default every tensor
    steps as in the paper's parameterisation (see :func:`gpd.expand`). ``noise_std``:
    symmetry-breaking noise on D's copies, relative to each tensor's RMS (0: none).
    ``layout``: how D lays out a channel's copies (see :func:`gpd.expand`).
    Build the optimizer from :meth:`param_groups`, which applies the student's
    weight-decay exclusions to D. ``export_student()`` returns a plain student of the
    original class, branches merged.

    Targets ``y`` are class indices ``(N,)`` or, after Mixup/CutMix, soft targets ``(N, K)``
    (rows of class probabilities). The cross-entropy terms use soft targets as they are:
    ``label_smoothing`` smooths hard labels only, since Mixup has smoothed its targets
    already. KD methods that need a hard label (DKD's target-class mask) get the argmax
    of the soft target, the class with the largest share of the mix; KD and ReviewKD do
    not use the label.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        kd: KDMethodName | KDMethod | KDLoss = "none",
        ratio: float = 2.0,
        *,
        kd_options: dict[str, Any] | None = None,
        dynamic_teacher: bool = True,
        sce_weight: float = 3.0,
        sce_eps: float = 0.1,
        label_smoothing: float = 0.0,
        noise_std: float = 1e-3,
        input_size: tuple[int, ...] | None = None,
        example_input: Any = None,
        branches: BranchKind | None = None,
        branch_init: BranchInit = "default",
        share_parameters: bool = True,
        compensate_step: bool = False,
        layout: LayoutChoice = "auto",
    ) -> None:
        super().__init__()
        self.kd_method = build_kd_method(kd, kd_options)
        if (teacher is not None) != self.kd_method.needs_teacher:
            raise ConfigError(
                "a static teacher needs a KD method and a KD method needs a static teacher "
                f"(teacher {'given' if teacher is not None else 'missing'}, kd={kd!r})"
            )
        if compensate_step and not (dynamic_teacher and share_parameters):
            raise ConfigError(
                "compensate_step applies to a student that shares D's parameters; "
                "it needs dynamic_teacher=True and share_parameters=True"
            )
        self.static_teacher = freeze(teacher) if teacher is not None else None
        self.sce_weight = sce_weight
        self.sce_eps = sce_eps
        self.label_smoothing = label_smoothing
        self.gpd: DynamicPair | None = None  # a GPDModel, or an UnsharedPair with share_parameters=False
        self.plain: nn.Module | None = None
        if dynamic_teacher:
            shared = expand(
                student,
                ratio,
                input_size=input_size,
                example_input=example_input,
                noise_std=noise_std,
                branches=branches,
                branch_init=branch_init,
                compensate_step=compensate_step,
                layout=layout,
            )
            self.gpd = shared if share_parameters else UnsharedPair.from_expanded(shared)
        else:
            self.plain = with_branches(student, branches, branch_init)
        self.review_heads = nn.ModuleDict()  # the method's heads by role (ReviewKD's); the name is the checkpoints'
        for role, head in self.kd_method.build_heads(self, input_size, example_input).items():
            self.review_heads[role] = head

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        student: nn.Module,
        teacher: nn.Module | None = None,
        *,
        input_size: tuple[int, ...] | None = None,
        example_input: Any = None,
    ) -> Distiller:
        """The Distiller of a run config: ``kd.method`` with its section's options (``kd.*``,
        ``dkd.*`` or ``reviewkd.*``), ``gpd.*`` and ``train.label_smoothing``."""
        g = cfg.gpd
        return cls(
            student,
            teacher,
            kd_method_class(cfg.kd.method, "kd.method").from_config(cfg),
            dynamic_teacher=g.enabled,
            ratio=g.ratio,
            sce_weight=g.sce_weight,
            sce_eps=g.sce_eps,
            label_smoothing=cfg.train.label_smoothing,
            noise_std=g.noise_std,
            input_size=input_size,
            example_input=example_input,
            branches=g.branches,
            branch_init=g.branch_init,
            share_parameters=g.share,
            compensate_step=g.compensate_step,
            layout=g.layout,
        )

    @property
    def ce_weight(self) -> float:
        """The weight of the CE terms of the student and D: the KD method's (mdistiller's CIFAR-100 KD
        uses 0.1 with a KD weight of 0.9), 1 by default."""
        return self.kd_method.ce_weight

    @property
    def has_dynamic_teacher(self) -> bool:
        return self.gpd is not None

    def student_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.gpd.forward_student(x) if self.gpd is not None else self.plain(x)  # type: ignore[misc]

    def dynamic_logits(self, x: torch.Tensor) -> torch.Tensor:
        """D's logits (the dynamic teacher's; the static teacher's are :meth:`static_targets`)."""
        if self.gpd is None:
            raise RuntimeError("this Distiller trains the student alone; it has no dynamic teacher")
        return self.gpd.forward_dynamic(x)

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Deprecated: the old name of :meth:`dynamic_logits` (D's logits, not the static teacher's)."""
        warn_renamed("Distiller.teacher_logits()", "Distiller.dynamic_logits()")
        return self.dynamic_logits(x)

    @property
    def shares_parameters(self) -> bool:
        """Whether the student is a slice of D (False for the baseline and for share_parameters=False)."""
        return isinstance(self.gpd, GPDModel)

    def student_module(self) -> nn.Module:
        """The module that runs the student's forward pass (for hooks, counting blocks)."""
        return trained_student_module(self.gpd) if self.gpd is not None else self.plain  # type: ignore[return-value]

    def train(self, mode: bool = True) -> Distiller:
        """Train mode for the student and D; the static teacher stays frozen in eval mode."""
        super().train(mode)
        if self.static_teacher is not None:
            self.static_teacher.eval()
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Older state_dicts hold D's ReviewKD head under ``review_heads.teacher.*``: renamed to
        ``review_heads.dynamic.*`` (with a warning). D itself is renamed by its pair
        (:class:`~gpd.gpd_model.PairRoles`); the static teacher's keys are left alone."""
        upgrade_state_keys(state_dict, f"{prefix}review_heads.", "teacher", "dynamic", "D's ReviewKD head")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @renamed_kwargs(teacher_logits="dynamic_logits")
    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        epoch: float | None = None,
        with_student_logits: bool = False,
        part: str = "all",
        targets: StaticTargets | None = None,
        dynamic_logits: torch.Tensor | None = None,
    ) -> Any:
        """The weighted loss terms of one batch; their sum is the training loss.

        ``epoch`` (fractional, from 0) drives KD warm-up schedules such as DKD's. ``y``:
        class indices (N,) or soft targets (N, K), see the class docstring.
        ``with_student_logits``: also return the student's logits (for training accuracy),
        as a :class:`DistillerOutput` ``(losses, student_logits)``; through this forward, so
        that a DDP wrapper sees the call. Without it the losses dict alone, as always.

        ``part`` runs one half of the step, for the sequential memory mode through a DDP
        wrapper (each half is then one forward that DDP sees): ``"dynamic"`` returns
        ``(D's losses, D's logits, the static teacher's targets)``; ``"student"`` takes
        those ``targets`` and ``dynamic_logits`` (D's, detached) and returns the student's
        losses (a DistillerOutput with ``with_student_logits=True``, as :meth:`student_output`).
        """
        if part == "dynamic":
            targets = self.static_targets(x)
            losses, dynamic_logits = self.dynamic_losses(x, y, targets, epoch=epoch)
            return losses, dynamic_logits, targets
        if part == "student":
            assert targets is not None, "part='student' needs the targets of part='dynamic'"
            out = self.student_output(x, y, targets, dynamic_logits, epoch=epoch)
            return out if with_student_logits else out.losses
        if part != "all":
            raise ValueError(f"part must be 'all', 'dynamic' or 'student', got {part!r}")
        targets = self.static_targets(x)
        losses, dynamic_logits = self.dynamic_losses(x, y, targets, epoch=epoch)
        student = self.student_output(x, y, targets, dynamic_logits, epoch=epoch)
        losses.update(student.losses)
        return DistillerOutput(losses, student.student_logits) if with_student_logits else losses

    # The two halves of forward(), for the sequential memory mode: D's loss is
    # back-propagated (and its graph freed) before the student's forward pass runs.

    def static_targets(self, x: torch.Tensor) -> StaticTargets:
        """The frozen static teacher's logits (and stage features for ReviewKD), without gradients."""
        if self.static_teacher is None:
            return StaticTargets(None, [])
        with torch.no_grad(), self.kd_method.taps(self.static_teacher, "teacher") as feats:
            logits = self.static_teacher(x)
        return StaticTargets(logits, feats)

    def dynamic_losses(
        self, x: torch.Tensor, y: torch.Tensor, targets: StaticTargets, *, epoch: float | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """D's loss terms (``ce_dynamic``, and ``kd_dynamic`` or ``reviewkd_dynamic`` against the
        static teacher) and D's logits; no terms and ``None`` when there is no dynamic teacher."""
        if self.gpd is None:
            return {}, None
        with self.kd_method.taps(self.gpd.dynamic, "dynamic") as feats:
            dynamic_logits = self.gpd.forward_dynamic(x)
        losses = {"ce_dynamic": self._ce(dynamic_logits, y)}
        self._add_kd(losses, "dynamic", dynamic_logits, feats, targets, y, epoch)
        return losses, dynamic_logits

    def teacher_losses(
        self, x: torch.Tensor, y: torch.Tensor, targets: StaticTargets, *, epoch: float | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Deprecated: the old name of :meth:`dynamic_losses` (D's terms, now keyed ``*_dynamic``)."""
        warn_renamed("Distiller.teacher_losses()", "Distiller.dynamic_losses()")
        return self.dynamic_losses(x, y, targets, epoch=epoch)

    @renamed_kwargs(teacher_logits="dynamic_logits")
    def student_losses(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: StaticTargets,
        dynamic_logits: torch.Tensor | None,
        *,
        epoch: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """The student's loss terms; SCE towards D's ``dynamic_logits`` (no gradient flows into them)."""
        return self.student_output(x, y, targets, dynamic_logits, epoch=epoch).losses

    def student_output(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: StaticTargets,
        dynamic_logits: torch.Tensor | None,
        *,
        epoch: float | None = None,
    ) -> DistillerOutput:
        """:meth:`student_losses` and the student's logits (for training accuracy)."""
        with self.kd_method.taps(self.student_module(), "student") as feats:
            student_logits = self.student_logits(x)
        losses = {"ce_student": self._ce(student_logits, y)}
        self._add_kd(losses, "student", student_logits, feats, targets, y, epoch)
        if dynamic_logits is not None:
            losses["sce"] = self.sce_weight * sce(student_logits, dynamic_logits, eps=self.sce_eps)
        return DistillerOutput(losses, student_logits)

    def _ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``ce_weight * CE(logits, y)``; ce_weight is the active KD method's (1.0 by default)."""
        if y.is_floating_point():  # soft targets (Mixup/CutMix): already smoothed there
            loss = F.cross_entropy(logits, y)
        else:
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return loss if self.ce_weight == 1.0 else self.ce_weight * loss

    def _add_kd(
        self,
        losses: dict[str, torch.Tensor],
        role: TapRole,
        logits: torch.Tensor,
        feats: list[torch.Tensor],
        targets: StaticTargets,
        y: torch.Tensor,
        epoch: float | None,
    ) -> None:
        """The KD terms of ``role`` ("student" or "dynamic") against the static teacher, if any."""
        if targets.logits is not None:
            losses.update(self.kd_method.losses(role, logits, feats, targets, y, epoch, self.review_heads))

    def export_student(self) -> nn.Module:
        """A standalone copy of the student, in eval mode."""
        student = self.gpd.export_student() if self.gpd is not None else RULES.merge_branches(self.student_module())
        return student.eval()

    def param_groups(self, weight_decay: float, *, adaptive: bool = False) -> list[dict[str, Any]]:
        """Optimizer parameter groups of the trainable parameters, as the student's recipe has them.

        A tensor of D gets no weight decay when the matching student tensor would not
        under timm's rules: one dimension or fewer, a name ending in ``.bias``, or a
        name in the student's ``no_weight_decay()`` (class and position tokens). D
        is a copy of the student's modules, so its parameter names are the student's.
        ``adaptive=True`` (Adam-like optimizers, whose step does not scale with the
        gradient) adds ``lr_scale`` and scales the decay of D's tensors that the
        paper's parameterisation stores differently (see :mod:`gpd.sharing.steps`);
        timm's schedulers apply ``lr_scale`` (:func:`~gpd.distill.param_groups.decay_groups`).
        """
        owners: list[tuple[nn.Module, dict[str, float]]] = []
        if self.gpd is not None:
            owners.append((self.gpd.dynamic, getattr(self.gpd, "paper_scales", {})))
            if not self.shares_parameters:
                owners.append((self.gpd.student, {}))  # type: ignore[attr-defined]
        elif self.plain is not None:
            owners.append((self.plain, {}))
        owners.append((self, {}))  # the rest (fusion heads): only parameters not listed above
        return decay_groups(owners, self._no_weight_decay_names(), weight_decay, adaptive=adaptive)

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip the gradients of every trainable parameter to a global norm of ``max_norm``,
        measured as the paper's optimizer sees it (:func:`gpd.sharing.steps.clip_grad_norm_`);
        returns the norm before clipping."""
        scales = self.gpd.grad_scales() if self.gpd is not None else {}
        return clip_grad_norm_([p for p in self.parameters() if p.requires_grad], max_norm, scales)

    def _no_weight_decay_names(self) -> set[str]:
        """The student's ``no_weight_decay()`` names (timm's convention), or none."""
        student = self.student_module()
        names = getattr(student, "no_weight_decay", None)
        return set(names()) if callable(names) else set()
