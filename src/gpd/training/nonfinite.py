"""What a run does when its loss becomes NaN or infinite (``train.on_nonfinite``).

Reading a loss back to the host at every step stalls a GPU's pipeline, so the ``stop``
policy keeps a flag on the device (with the first bad step and its loss terms) and
reads it only every ``train.nonfinite_check_every`` steps and at the end of each
epoch, before anything is evaluated or written. The flag is summed over the processes
at each read, so every process stops at the same step. The updates made after the bad
step until the read are discarded with the run: the last checkpoint, written at the
end of the previous epoch, is kept. The ``skip`` policy must decide before each update
whether to make it, so it reads the flag at every step (one host sync per step, as
fp16's gradient scaler does anyway).
"""

from __future__ import annotations

import torch

from gpd.errors import GPDError
from gpd.training.distributed import DistContext

NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteLoss(GPDError):
    """The loss became NaN or infinite under ``train.on_nonfinite=stop``."""


class NonFiniteGuard:
    """Watches each step's loss terms on the device; see the module docstring."""

    def __init__(self, policy: str, check_every: int, ctx: DistContext, device: torch.device) -> None:
        if policy not in NONFINITE_POLICIES:
            raise GPDError(f"train.on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got '{policy}'")
        self.policy, self.ctx, self.device = policy, ctx, device
        self.check_every = 1 if policy == "skip" else max(int(check_every), 1)
        self.reset()

    def reset(self) -> None:
        """Forget what was seen (each epoch, and after each step under ``skip``)."""
        self._bad = torch.zeros((), device=self.device)
        self._count = torch.zeros((), dtype=torch.long, device=self.device)
        self._first_index = torch.full((), -1, dtype=torch.long, device=self.device)
        self._first_terms: torch.Tensor | None = None
        self._names: list[str] = []
        self._where: list[str] = []
        self._global_first = -1

    def observe(self, losses: dict[str, torch.Tensor], where: str) -> None:
        """Record a step's detached loss terms: device operations only, no host sync."""
        values = torch.stack([v.float().reshape(()) for v in losses.values()])
        bad = ~torch.isfinite(values.sum())
        first_now = bad & (self._first_index < 0)
        if self._first_terms is None or self._names != list(losses):
            self._names, self._first_terms = list(losses), torch.zeros_like(values)
        self._first_terms = torch.where(first_now, values, self._first_terms)
        self._first_index = torch.where(first_now, self._count, self._first_index)
        self._count = self._count + 1
        self._bad = self._bad + bad.float()
        self._where.append(where)

    def due(self) -> bool:
        """Whether the ``stop`` policy reads the flag after the step just observed (every
        ``check_every`` steps; ``skip`` reads it within each step, :meth:`skipped_step`)."""
        return self.policy == "stop" and len(self._where) % self.check_every == 0

    def flagged(self) -> bool:
        """Read the flag (one host sync, and one all-reduce under DDP): has any process seen a
        non-finite loss since the last reset? Also learns the earliest bad step of all processes."""
        never = torch.full((), -(2**40), device=self.device, dtype=torch.float64)
        first = torch.where(self._first_index >= 0, -self._first_index.double(), never)
        state = torch.stack([(self._bad > 0).double(), first])
        if self.ctx.enabled:
            torch.distributed.all_reduce(state, op=torch.distributed.ReduceOp.MAX)
        bad, minus_first = state.tolist()
        self._global_first = int(-minus_first) if bad else -1
        return bool(bad)

    def first_bad(self) -> str:
        """'<where> (term=value, ...)' of the earliest non-finite step of any process (after
        :meth:`flagged`); the terms are this process's, or the step is marked as another's."""
        index = self._global_first
        if index < 0:
            return "no step"
        if int(self._first_index) != index or self._first_terms is None:
            return f"{self._where[index]} (on another process)"
        terms = ", ".join(f"{k}={v:.4g}" for k, v in zip(self._names, self._first_terms.tolist()))
        return f"{self._where[index]} ({terms})"

    def skipped_step(self) -> str | None:
        """``skip`` policy: the description of the step just observed if it must be dropped,
        else None; clears the flag either way."""
        bad = self.first_bad() if self.flagged() else None
        self.reset()
        return bad

    def check_step(self, losses: dict[str, torch.Tensor], where: str) -> str | None:
        """The loop's call after each step's backward: observe its loss terms; under ``skip``,
        return the step's description if its update must be dropped (else None)."""
        self.observe(losses, where)
        return self.skipped_step() if self.policy == "skip" else None

    def raise_if_flagged(self) -> None:
        """``stop`` policy: raise if a non-finite loss was seen since the last reset."""
        if self.flagged():
            raise NonFiniteLoss(
                f"the loss became non-finite at {self.first_bad()}; the last good checkpoint is kept; lower "
                "train.lr, set train.grad_clip, or pass train.on_nonfinite=skip to drop such steps"
            )
