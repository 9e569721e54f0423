"""The GPD objective as a module: ``forward(x, y)`` returns its named loss terms and the student's logits.

Following the distiller contract of mdistiller, a call returns a
:class:`~gpd.distill.output.DistillerOutput`: the losses as a dict of weighted scalars
(the training loop only sums them, with :func:`~gpd.distill.output.total_loss`) and the
student's logits. The CLI's trainer and a user's own loop use this same object.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import torch
from torch import Tensor, nn

from gpd.choices import BranchInit, BranchKind, LayoutChoice, StepRule
from gpd.deprecated import upgrade_distiller_keys
from gpd.distill import legacy
from gpd.distill.arguments import DistillerArguments, check_distiller_arguments
from gpd.distill.kd_methods import KDLoss
from gpd.distill.method import KDMethod, TapRole, hard_labels, role_networks
from gpd.distill.output import DistillerOutput, DynamicPart, LogitsFn, StaticTargets
from gpd.distill.pair import UnsharedPair
from gpd.distill.param_groups import decay_groups, no_weight_decay_names, parameter_owners
from gpd.distill.probe import unchanged_state
from gpd.distill.tasks import Task, make_task, task_kd_method_class
from gpd.errors import ArgumentError
from gpd.expansion import expand
from gpd.expansion.expand import with_branches
from gpd.expansion.model import GPDModel
from gpd.expansion.rules import RULES
from gpd.inputs import Inputs, call_model
from gpd.sharing.steps import clip_grad_norm_

__all__ = ["Distiller", "DistillerOutput", "DynamicPart", "StaticTargets", "freeze", "hard_labels"]

Part = Literal["all", "dynamic", "student"]


def freeze(teacher: nn.Module) -> nn.Module:
    """A static teacher: eval mode (BatchNorm statistics fixed) and no gradients."""
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


class Distiller(nn.Module):
    """Train a student with GPD (or alone, as the baseline): ``distiller(x, y)`` returns a
    :class:`DistillerOutput` ``(losses, student_logits)`` whatever the options.

    With ``dynamic_teacher=True`` the student is expanded into a dynamic teacher D of width
    ``ratio`` that shares its parameters, and the loss is

        CE(z_D, y) + CE(z_S, y) + sce_weight * SCE(z_S || sg(z_D))

    (the GPD paper (section 3), scratch and fine-tuning scenarios). With a frozen static
    ``teacher`` and a KD method (``kd="kd"``, ``"dkd"``, ``"reviewkd"`` or a registered name,
    options in ``kd_options``; or a :class:`~gpd.distill.method.KDMethod` class or object, or a
    plain logit loss ``(z, z_T, y, epoch) -> loss``) the method's loss against the static
    teacher is added for D and for the student; the method is the submodule ``kd_method``,
    with its heads. With ``dynamic_teacher=False`` the student trains alone: CE, plus KD if a
    static teacher is given (the baselines). :meth:`from_config` builds it from a run config.

    :attr:`network` is the trained network: the GPDModel (D with its student view), with
    ``share_parameters=False`` (the ablation ``gpd.share=false``) an
    :class:`~gpd.distill.pair.UnsharedPair` (D built the same way, by Inverse
    Reparameterization, then given parameters of its own), or the baseline's student;
    :attr:`student` runs the student's forward pass. ``parameters()`` are the trainable ones.
    ``branches="orepa"`` trains every 3x3 stride-1 convolution as a six-branch block
    (Channel-Branch Reparameterization). ``step_rule="plain"`` removes the r² effective SGD
    step that sharing gives the student's weights stored divided by r, and gives D the plain
    wide network's steps; ``"paper"`` (the default) steps every tensor as in the paper's
    parameterisation (see :func:`gpd.expand`). ``noise_std``: symmetry-breaking noise on D's
    copies, relative to each tensor's RMS (0: none). ``layout``: how D lays out a channel's
    copies (see :func:`gpd.expand`). ``logits_fn``: how a model's output becomes logits
    (:func:`~gpd.distill.output.logits_of`). Build the optimizer from :meth:`param_groups`;
    ``export_student()`` returns a plain student of the original class, branches merged.
    ``task``: what the networks predict, with its losses and metrics (:mod:`gpd.distill.tasks`):
    ``"classification"`` (the default), ``"segmentation"``, a registered name or import path, or
    a :class:`~gpd.distill.tasks.Task` class (options in ``task_options``) or object.

    Targets ``y`` are class indices ``(N,)`` or, after Mixup/CutMix, soft targets ``(N, K)``,
    used by the CE terms as they are (``label_smoothing`` smooths hard labels only). KD
    methods that need a hard label (DKD's target-class mask) get the soft target's argmax.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        kd: str | KDMethod | type[KDMethod] | KDLoss = "none",
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
        step_rule: StepRule = "paper",
        layout: LayoutChoice = "auto",
        logits_fn: LogitsFn | None = None,
        compensate_step: bool | None = None,
        task: str | Task | type[Task] = "classification",
        task_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if compensate_step is not None:  # the old boolean name of step_rule
            step_rule = legacy.step_rule_of_keyword(compensate_step, step_rule)  # type: ignore[assignment]
        self.task = make_task(task, task_options, label_smoothing)
        method = self.task.kd_method(kd, kd_options)
        kd_name = kd if isinstance(kd, str) else method.name or type(method).__name__
        check_distiller_arguments(
            DistillerArguments(teacher is not None, kd_name, method.needs_teacher, dynamic_teacher,
                               share_parameters, step_rule, ratio, sce_weight, sce_eps, noise_std)
        )  # fmt: skip
        self.static_teacher = freeze(teacher) if teacher is not None else None
        self.sce_weight, self.sce_eps, self.label_smoothing = sce_weight, sce_eps, label_smoothing
        self.logits_fn = logits_fn
        network: nn.Module
        if dynamic_teacher:
            shared = expand(
                student,
                ratio,
                input_size=input_size,
                example_input=example_input,
                noise_std=noise_std,
                branches=branches,
                branch_init=branch_init,
                step_rule=step_rule,
                layout=layout,
            )
            network = shared if share_parameters else UnsharedPair.from_expanded(shared)
        else:
            network = with_branches(student, branches, branch_init)
        self.network = network  # after the static teacher, before the method: the parameter order of checkpoints
        if example_input is None and input_size is not None:
            example_input = torch.zeros(2, *input_size)
        with unchanged_state(self):  # the method's probing passes leave every mode and buffer as it was
            method.build(role_networks(self.student, self.network, self._pair(), self.static_teacher, example_input))
        self.kd_method = method

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        student: nn.Module,
        teacher: nn.Module | None = None,
        *,
        input_size: tuple[int, ...] | None = None,
        example_input: Any = None,
    ) -> Distiller:
        """The Distiller of a run config (a :class:`gpd.config.Config`, read by attribute): ``kd.method``
        with its section's options (``kd.*``, ``dkd.*``, ``reviewkd.*``, ``cwd.*`` or a user method's),
        ``gpd.*``, ``train.label_smoothing`` and ``task`` with ``task_options``."""
        g = cfg.gpd
        task = getattr(cfg, "task", "classification")
        method = task_kd_method_class(cfg.kd.method, task, "kd.method")
        return cls(
            student,
            teacher,
            method.from_config(getattr(cfg, method.section, None) if method.section else None),
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
            step_rule=g.step_rule,
            layout=g.layout,
            task=task,
            task_options=dict(getattr(cfg, "task_options", None) or {}),
        )

    @property
    def ce_weight(self) -> float:
        """The weight of the CE terms of the student and D: the KD method's ``ce_weight`` (1 by default)."""
        return self.kd_method.ce_weight

    @property
    def has_dynamic_teacher(self) -> bool:
        return self._pair() is not None

    @property
    def shares_parameters(self) -> bool:
        """Whether the student is a slice of D (False for the baseline and for share_parameters=False)."""
        return isinstance(self.network, GPDModel)

    @property
    def student(self) -> nn.Module:
        """The module that runs the student's forward pass (for hooks, counting blocks): a GPDModel's
        student view's parameter-free module, an UnsharedPair's student, or the baseline's network."""
        network = self.network
        if isinstance(network, GPDModel):
            return network.student.module
        return network.student if isinstance(network, UnsharedPair) else network

    def _pair(self) -> GPDModel | UnsharedPair | None:
        """The network when it is a dynamic teacher with its student, else None (the baseline)."""
        network = self.network
        return network if isinstance(network, (GPDModel, UnsharedPair)) else None

    def grad_scales(self) -> dict[Tensor, float]:
        """D's tensors that the paper's parameterisation stores differently, each with its scale
        (:func:`gpd.sharing.steps.clip_grad_norm_`); empty without D or with the plain steps."""
        pair = self._pair()
        return pair.grad_scales() if pair is not None else {}

    def student_logits(self, x: Inputs) -> Tensor:
        pair = self._pair()
        return self.task.logits(
            call_model(pair.forward_student if pair is not None else self.network, x), self.logits_fn
        )

    def dynamic_logits(self, x: Inputs) -> Tensor:
        """D's logits (the dynamic teacher's, not the static teacher's)."""
        pair = self._pair()
        if pair is None:
            raise RuntimeError("this Distiller trains the student alone; it has no dynamic teacher")
        return self.task.logits(call_model(pair.forward_dynamic, x), self.logits_fn)

    def train(self, mode: bool = True) -> Distiller:
        """Train mode for the student and D; the static teacher stays frozen in eval mode."""
        super().train(mode)
        if self.static_teacher is not None:
            self.static_teacher.eval()
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Older keys renamed (with a warning, :mod:`gpd.deprecated`); D's by its pair (PairRoles)."""
        upgrade_distiller_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @overload
    def forward(
        self, x: Inputs, y: Tensor, *, epoch: float | None = ..., part: Literal["all"] = ...
    ) -> DistillerOutput: ...

    @overload
    def forward(self, x: Inputs, y: Tensor, *, epoch: float | None = ..., part: Literal["dynamic"]) -> DynamicPart: ...

    @overload
    def forward(
        self, x: Inputs, y: Tensor, *, epoch: float | None = ..., part: Literal["student"], dynamic: DynamicPart
    ) -> DistillerOutput: ...

    def forward(
        self,
        x: Inputs,
        y: Tensor,
        *,
        epoch: float | None = None,
        part: Part = "all",
        dynamic: DynamicPart | None = None,
        **old: Any,
    ) -> DistillerOutput | DynamicPart:
        """The weighted loss terms of one batch (their sum is the training loss) and the student's logits.

        ``epoch`` (fractional, from 0) drives KD warm-up schedules such as DKD's. ``y``: class
        indices (N,) or soft targets (N, K), see the class docstring. ``x``: a tensor, or a mapping
        passed as keyword arguments (``input_ids``, ``attention_mask``, ...: :mod:`gpd.inputs`).

        ``part`` runs one phase of the step, so that the sequential memory mode and the gradient
        probe (:mod:`gpd.training.backward`) call each phase through this forward, which a DDP
        wrapper sees: ``"dynamic"`` gives a :class:`DynamicPart` (the static teacher's targets,
        D's terms and logits); ``"student"`` takes it as ``dynamic`` and gives the student's
        terms (SCE towards D's logits, detached) and logits. ``"all"`` (the default) runs both:
        D's terms, then the student's.
        """
        if old:  # the keywords of older releases (gpd.distill.legacy)
            dynamic = legacy.forward_arguments(part, dynamic, old)
        if part == "dynamic":
            return self._dynamic_terms(x, y, self._static_targets(x), epoch)
        if part == "student":
            if dynamic is None:
                raise ArgumentError("part='student' needs dynamic=, the DynamicPart that part='dynamic' returned")
            return self._student_output(x, y, dynamic, epoch)
        if part != "all":
            raise ArgumentError(f"part must be 'all', 'dynamic' or 'student', got {part!r}")
        first = self._dynamic_terms(x, y, self._static_targets(x), epoch)
        student = self._student_output(x, y, first, epoch)
        losses = first.losses
        losses.update(student.losses)
        return DistillerOutput(losses, student.student_logits)

    # The phases of forward(). In the sequential memory mode D's loss is back-propagated
    # (and its graph freed) before the student's forward pass runs.

    def _static_targets(self, x: Inputs) -> StaticTargets:
        """The frozen static teacher's logits (and stage features for ReviewKD), without gradients."""
        if self.static_teacher is None:
            return StaticTargets(None, [])
        with torch.no_grad(), self.kd_method.taps(self.static_teacher, "teacher") as feats:
            logits = self.task.logits(call_model(self.static_teacher, x), self.logits_fn)
        return StaticTargets(logits, feats)

    def _dynamic_terms(self, x: Inputs, y: Tensor, targets: StaticTargets, epoch: float | None) -> DynamicPart:
        """D's loss terms (``ce_dynamic``, and ``kd_dynamic`` or ``reviewkd_dynamic`` against the static
        teacher) and D's logits; no terms and ``None`` when there is no dynamic teacher."""
        pair = self._pair()
        if pair is None:
            return DynamicPart({}, None, targets)
        with self.kd_method.taps(pair.dynamic, "dynamic") as feats:
            output = call_model(pair.forward_dynamic, x)
            dynamic_logits = self.task.logits(output, self.logits_fn)
        losses = self._supervised("dynamic", output, dynamic_logits, y)
        self._add_kd(losses, "dynamic", dynamic_logits, feats, targets, y, epoch)
        return DynamicPart(losses, dynamic_logits, targets)

    def _student_output(self, x: Inputs, y: Tensor, dynamic: DynamicPart, epoch: float | None) -> DistillerOutput:
        """The student's loss terms and logits; SCE towards D's logits (no gradient flows into them)."""
        pair = self._pair()
        with self.kd_method.taps(self.student, "student") as feats:
            output = call_model(pair.forward_student if pair is not None else self.network, x)
            student_logits = self.task.logits(output, self.logits_fn)
        losses = self._supervised("student", output, student_logits, y)
        self._add_kd(losses, "student", student_logits, feats, dynamic.targets, y, epoch)
        if dynamic.dynamic_logits is not None:
            target = dynamic.dynamic_logits.detach()
            consistency = self.task.consistency(student_logits, target, self.sce_eps)
            losses[self.task.consistency_name] = self.sce_weight * consistency
        return DistillerOutput(losses, student_logits)

    def _supervised(self, role: TapRole, output: Any, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The task's supervised terms (``ce_<role>``), each times ``ce_weight`` (the KD method's, 1.0 by default)."""
        losses = self.task.supervised_losses(role, output, logits, y)
        weight = self.ce_weight
        return losses if weight == 1.0 else {name: weight * loss for name, loss in losses.items()}

    def _add_kd(
        self,
        losses: dict[str, Tensor],
        role: TapRole,
        logits: Tensor,
        feats: list[Tensor],
        targets: StaticTargets,
        y: Tensor,
        epoch: float | None,
    ) -> None:
        """The KD terms of ``role`` ("student" or "dynamic") against the static teacher, if any."""
        if targets.logits is not None:
            losses.update(self.kd_method.losses(role, logits, feats, targets, y, epoch))

    def export_student(self) -> nn.Module:
        """A standalone copy of the student, in eval mode."""
        pair = self._pair()
        student = pair.export_student() if pair is not None else RULES.merge_branches(self.student)
        return student.eval()

    def param_groups(
        self, weight_decay: float, *, adaptive: bool = False, decay_norms_and_biases: bool = False
    ) -> list[dict[str, Any]]:
        """Optimizer groups of the trainable parameters: the student's weight-decay rules applied to D,
        whose parameter names are the student's (timm's: no decay for 1-D tensors and biases unless
        ``decay_norms_and_biases``; none ever for ``no_weight_decay()`` names); ``adaptive=True`` (Adam-like
        optimizers): the paper's ``lr_scale`` and decay (:func:`~gpd.distill.param_groups.decay_groups`)."""
        owners = parameter_owners(self._pair(), self.network, self)
        exempt = no_weight_decay_names(self.student)
        return decay_groups(
            owners, exempt, weight_decay, adaptive=adaptive, decay_norms_and_biases=decay_norms_and_biases
        )

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """Clip the gradients of every trainable parameter to a global norm of ``max_norm``,
        measured as the paper's optimizer sees it (:func:`gpd.sharing.steps.clip_grad_norm_`);
        returns the norm before clipping."""
        return clip_grad_norm_([p for p in self.parameters() if p.requires_grad], max_norm, self.grad_scales())

    # the old public names, for one release (gpd.distill.legacy): each warns
    gpd = property(legacy.gpd_network)
    plain = property(legacy.plain_network)
    review_heads = property(legacy.review_heads)
    student_module = legacy.student_module
    teacher_logits = legacy.teacher_logits
    static_targets = legacy.static_targets
    dynamic_losses = legacy.dynamic_losses
    teacher_losses = legacy.teacher_losses
    student_output = legacy.student_output
    student_losses = legacy.student_losses
