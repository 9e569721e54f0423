"""Per-epoch gradient statistics, accumulated on the device and read once per epoch.

The global gradient norm before clipping (as the paper's optimizer sees it, see
:mod:`gpd.sharing.steps`), the fraction of clipped steps, and the norms of D's and the
student's loss gradients measured separately on probed steps (``train.grad_probe_every``).
"""

from __future__ import annotations

from collections import defaultdict

import torch


class GradStats:
    """Sums of one epoch's gradient statistics, as device tensors (no host sync per step)."""

    def __init__(self, device: torch.device, clipping: bool) -> None:
        self.device, self.clipping = device, clipping
        self.reset()

    def reset(self) -> None:
        """Start an epoch. The factory closes over the device only: a closure over ``self``
        would make a reference cycle, whose tensors then wait for Python's rare full collections."""
        device = self.device
        self.sums: defaultdict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))

    def add_probe(self, dynamic_norm: torch.Tensor, student_norm: torch.Tensor, loss_scale: float) -> None:
        """A probed step's loss-gradient norms of D's terms and the student's (of the scaled loss)."""
        self.sums["grad_norm_dynamic"] += dynamic_norm / loss_scale
        self.sums["grad_norm_student"] += student_norm / loss_scale
        self.sums["probes"] += 1

    def add_step(self, norm: torch.Tensor, clip: float | None) -> None:
        """A step's global norm before clipping at ``clip`` (0 or None: no clipping)."""
        if clip:
            self.sums["clipped"] += (norm > clip).float()
        self.sums["grad_norm"] += norm.to(self.device)
        self.sums["steps"] += 1

    def epoch_means(self) -> dict[str, float]:
        """The epoch's means (one host sync): grad_norm, clipped_frac (with clipping), and the
        probed grad_norm_student and grad_norm_dynamic (when steps were probed)."""
        stats = {name: float(value) for name, value in self.sums.items()}
        steps = max(stats.pop("steps", 0.0), 1.0)
        out = {"grad_norm": stats.get("grad_norm", 0.0) / steps}
        if self.clipping:
            out["clipped_frac"] = stats.get("clipped", 0.0) / steps
        probes = stats.get("probes", 0.0)
        if probes:
            out["grad_norm_student"] = stats["grad_norm_student"] / probes
            out["grad_norm_dynamic"] = stats["grad_norm_dynamic"] / probes
        return out
