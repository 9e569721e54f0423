"""Which weights ``student.pt`` gets: selected on the validation split, never on the test set.

With ``data.val_split`` set, every epoch offers two candidates, the final weights and
(with ``train.ema``) their EMA; the one with the higher validation accuracy over all
epochs is kept (ties keep the earlier epoch, and the final weights over the EMA). Without
a validation split nothing is selected: the last epoch's weights are exported, their
EMA when ``train.ema`` is on. The test accuracy is only reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn

from gpd.distill.pair import DynamicPair
from gpd.expansion.rules import RULES


@dataclass
class Choice:
    """One candidate: its epoch, which weights ("final" or "ema") and its accuracies."""

    epoch: int
    weights: str
    test_acc: float
    val_acc: float | None = None


class WeightSelection:
    """Tracks the weights to export; its state goes into the checkpoint (resume keeps the choice)."""

    def __init__(self, *, has_val: bool, has_ema: bool) -> None:
        self.has_val, self.has_ema = has_val, has_ema
        self.choice: Choice | None = None
        self.state: dict[str, torch.Tensor] | None = None  # the chosen student's weights (validation only)

    @property
    def rule(self) -> str:
        if self.has_val:
            return "the best validation accuracy over epochs" + (", final or EMA weights" if self.has_ema else "")
        return (
            "the last epoch's "
            + ("EMA weights" if self.has_ema else "weights")
            + " (no data.val_split: nothing is selected)"
        )

    def update(self, epoch: int, acc: dict[str, float], export: Callable[[str], nn.Module]) -> bool:
        """Consider this epoch's candidates; ``acc`` holds 'student', 'ema_student' and their
        'val_' versions; ``export(weights)`` builds the student of the final or EMA weights.
        Returns whether the choice changed."""
        if not self.has_val:
            weights = "ema" if self.has_ema else "final"
            self.choice = Choice(epoch, weights, acc[_key(weights)])
            return True
        candidates = [Choice(epoch, "final", acc["student"], acc["val_student"])]
        if self.has_ema:
            candidates.append(Choice(epoch, "ema", acc["ema_student"], acc["val_ema_student"]))
        best = max(candidates, key=lambda c: c.val_acc)  # type: ignore[arg-type,return-value]  # max keeps the first of ties
        if self.choice is not None and best.val_acc <= self.choice.val_acc:  # type: ignore[operator]
            return False
        self.choice = best
        self.state = {k: v.detach().cpu().clone() for k, v in export(best.weights).state_dict().items()}
        return True

    def student(self, export: Callable[[str], nn.Module]) -> nn.Module:
        """The chosen student: loaded from the kept weights, or built from the current ones."""
        assert self.choice is not None, "no epoch has been evaluated"
        module = export(self.choice.weights)
        if self.state is not None:
            module.load_state_dict(self.state)
        return module

    def state_dict(self) -> dict[str, Any]:
        return {"choice": asdict(self.choice) if self.choice else None, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.choice = Choice(**state["choice"]) if state.get("choice") else None
        self.state = state.get("state")


def _key(weights: str) -> str:
    return "ema_student" if weights == "ema" else "student"


def export_student_of(core: nn.Module) -> nn.Module:
    """A standalone student of the original class from a trained core (the blocks of every registered branch
    kind merged, as every export does: :meth:`gpd.expansion.RuleSet.merge_branches`)."""
    student = core.export_student() if isinstance(core, DynamicPair) else RULES.merge_branches(core)
    return student.eval()


def standalone_student(core: nn.Module, ema: ModelEmaV3 | None, weights: str) -> nn.Module:
    """A standalone student of the final ("final") or the EMA ("ema") weights, on the CPU."""
    source = ema.module if weights == "ema" else core  # type: ignore[union-attr]
    return export_student_of(source).to(memory_format=torch.contiguous_format).cpu()
