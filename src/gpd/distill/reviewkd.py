"""ReviewKD as a KD method: stage-feature taps, one fusion head per role, the HCL loss.

The student and D are each given a :class:`~gpd.losses.ReviewKDHead` sized to their own
stage widths (and to the static teacher's as targets), by a probing forward pass when
the Distiller is built; the heads are the method's (``kd_method.heads.student``,
``kd_method.heads.dynamic`` in the Distiller's state_dict) and are discarded on export.
The loss of each role is ``ramp * weight * HCL(head(features), teacher features)`` with
``ramp = min(epoch / warmup_epochs, 1)`` (1 without warm-up). See
:mod:`gpd.losses.reviewkd` for the heads and the loss, :mod:`gpd.distill.features` for
the taps.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from gpd.distill.features import feature_stage_names, stage_features
from gpd.distill.method import KDMethod, KDNetworks, KDOptions, StaticTargets, TapRole
from gpd.errors import ConfigError
from gpd.inputs import call_model
from gpd.losses import ReviewKDHead, reviewkd_loss

LOGIT_METHODS = 'use kd="kd" or kd="dkd" for this pair (kd.method=kd or dkd in a config): they distil logits only'


def _stages_of(model: nn.Module, who: str) -> list[str]:
    """The stage modules of ``model`` (:func:`~gpd.distill.features.feature_stage_names`); a model
    without CNN stages (a transformer such as BERT) is refused with the methods that need none."""
    try:
        return feature_stage_names(model)
    except ConfigError:
        raise ConfigError(
            f"ReviewKD fuses the feature maps of CNN stages, and the {who} ({type(model).__name__}) has no stages "
            f"gpd can tell (no stage_names, feature_info or layer1..layer4); {LOGIT_METHODS}"
        ) from None


@dataclass
class ReviewKDOptions(KDOptions):
    """The options of ReviewKD: the ``reviewkd.*`` keys of a run config."""

    weight: float = 1.0  # weight of the hierarchical context loss
    mid_channels: int = 64  # width of the attention-based fusion modules
    warmup_epochs: float = 0.0  # linear ramp min(epoch / warmup_epochs, 1) of the ReviewKD loss; 0: none
    student_preact: bool = True  # student's and D's stage taps before the final ReLU (false: after it)

    def problems(self) -> list[str]:
        return [] if self.mid_channels >= 1 else [f"mid_channels must be >= 1, got {self.mid_channels}"]


class ReviewKD(KDMethod):
    """Knowledge review (Chen et al., CVPR 2021) from the static teacher's stages, for the student and D."""

    name = "reviewkd"
    title = "ReviewKD"
    section = "reviewkd"
    Options = ReviewKDOptions
    options: ReviewKDOptions

    def __init__(self, options: ReviewKDOptions | None = None) -> None:
        super().__init__(options)
        self.student_stages: list[str] = []  # the student's (and D's) stage modules, set by build
        self.teacher_stages: list[str] = []

    def taps(self, model: nn.Module, role: TapRole) -> AbstractContextManager[list[torch.Tensor]]:
        """ReviewKD's features of ``model``: one per stage, then the pooled level (a 1x1 map).

        As in the ReviewKD paper's code and mdistiller, the static teacher's stage features
        are pre-activation (the stage's value before its final ReLU, which keeps the
        negative part a post-ReLU map has lost) and its pooled level is the classifier's
        pooled input. The student and D (same module classes, so the same stage names)
        tap pre-activation too unless ``student_preact=False`` (mdistiller's CIFAR-100
        setting, where the student's stage outputs are post-ReLU).
        """
        teacher = role == "teacher"
        names = self.teacher_stages if teacher else self.student_stages
        preact = True if teacher else self.options.student_preact
        return stage_features(model, names, preact=preact, pooled=True)

    def build(self, networks: KDNetworks) -> None:
        """One fusion head for the student and one for D, sized by a probing forward pass.

        Each network gives one feature per stage plus the pooled level (see :meth:`taps`).
        The Distiller runs this in eval mode and restores every module's mode and buffer
        afterwards (:func:`~gpd.distill.probe.unchanged_state`), so that building leaves
        BatchNorm statistics as they were: this matters when fine-tuning.
        """
        teacher, student = networks.teacher, networks.student
        assert teacher is not None, "ReviewKD needs the static teacher"
        self.student_stages = _stages_of(student.module, "student")
        self.teacher_stages = _stages_of(teacher.module, "static teacher")
        if len(self.student_stages) != len(self.teacher_stages):
            raise ConfigError(
                f"ReviewKD pairs stages one to one: the student has {len(self.student_stages)} "
                f"({', '.join(self.student_stages)}), the static teacher {len(self.teacher_stages)}"
            )
        example_input = networks.example_input
        if example_input is None:
            raise ConfigError("ReviewKD needs input_size= or example_input= to size its fusion heads")
        with torch.no_grad():
            with self.taps(teacher.module, "teacher") as t_feats:
                call_model(teacher.forward, example_input)
            with self.taps(student.module, "student") as s_feats:
                call_model(student.forward, example_input)
            for who, feats, names in (
                ("static teacher", t_feats, self.teacher_stages),
                ("student", s_feats, self.student_stages),
            ):
                for name, feat in zip(names, feats):
                    if feat.ndim != 4:
                        raise ConfigError(
                            f"ReviewKD fuses feature maps (N, C, H, W), but the {who}'s stage '{name}' gives "
                            f"shape {tuple(feat.shape)} (tokens?); {LOGIT_METHODS}"
                        )
            widths = {"student": [f.shape[1] for f in s_feats]}
            if networks.dynamic is not None:
                with self.taps(networks.dynamic.module, "dynamic") as d_feats:
                    call_model(networks.dynamic.forward, example_input)
                widths["dynamic"] = [f.shape[1] for f in d_feats]
        targets = [f.shape[1] for f in t_feats]
        for role, channels in widths.items():
            self.heads[role] = ReviewKDHead(channels, targets, self.options.mid_channels)

    def losses(
        self,
        role: str,
        logits: torch.Tensor,
        features: list[torch.Tensor],
        targets: StaticTargets,
        y: torch.Tensor,
        epoch: float | None,
    ) -> dict[str, torch.Tensor]:
        warmup = self.options.warmup_epochs
        ramp = 1.0 if not warmup or epoch is None else min(epoch / warmup, 1.0)
        head = self.heads[role]
        assert isinstance(head, ReviewKDHead)
        return {f"reviewkd_{role}": ramp * self.options.weight * reviewkd_loss(head, features, targets.features)}
