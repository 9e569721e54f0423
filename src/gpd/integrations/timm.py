"""GPD as a timm training task: ``GPDTask`` drops into loops written for ``timm.task``.

timm (>= 1.0.23) trains through ``TrainingTask`` objects: ``task(input, target)`` returns a
dict with ``loss`` (to back-propagate) and ``output`` (for metrics), and the task owns
distributed wrapping, EMA, the eval model and checkpoint state. ``GPDTask`` wraps a
:class:`gpd.Distiller`:

* ``forward`` returns ``loss`` (the sum of the Distiller's terms), ``output`` (the
  student's logits) and every term (``ce_student``, ``sce``, ...);
* the eval model is the student: for GPD a module whose forward is the student's and
  whose state_dict is the pair's (D's parameters, the student's BatchNorm statistics), so
  timm's checkpoint ``state_dict`` holds D and restores it; :meth:`export_student` gives
  the plain student for deployment;
* task state: the KD method's state (ReviewKD's fusion heads), when it has any;
* ``prepare_distributed`` wraps the Distiller in DDP (the frozen static teacher has no
  trainable parameters, so DDP leaves it alone); ``compile`` compiles it.

Set ``task.epoch`` (fractional, from 0) each step when a KD method has a warm-up (DKD).
Clip with :meth:`clip_grad_norm_`, which measures the paper's gradient norm (see
docs/method.md, "Per-layer steps"); timm's own clipping of ``get_clip_parameters()``
works too, on gpd's coordinates.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from timm.task import TrainingTask
from torch import nn

from gpd.deprecated import upgrade_task_state
from gpd.distill import Distiller, DynamicPair, KDMethod, total_loss
from gpd.outputs import logits_of


class StudentForward(nn.Module):
    """The student of a dynamic-teacher pair as an eval module: forward is the student's,
    the state is the pair's (D's parameters and the student's BatchNorm statistics)."""

    pair: DynamicPair  # a GPDModel or UnsharedPair: a module, registered as a child

    def __init__(self, pair: DynamicPair) -> None:
        super().__init__()
        self.pair = pair

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The student's logits (:func:`gpd.outputs.logits_of` of its output): what timm's metrics read."""
        return logits_of(self.pair.forward_student(*args, **kwargs))


def _distiller_in(module: nn.Module) -> Distiller:
    """The Distiller inside DDP, torch.compile or EMA wrappers."""
    current: Any = module
    for _ in range(8):
        if isinstance(current, Distiller):
            return current
        inner = getattr(current, "module", None)  # DDP, timm's EMA
        if inner is None:
            inner = getattr(current, "_orig_mod", None)  # torch.compile
        if inner is None:
            break
        current = inner
    raise TypeError(f"no gpd.Distiller inside {type(module).__name__}")


class GPDTask(TrainingTask):
    """A timm training task running GPD: ``GPDTask(student, teacher=None, kd="none", ratio=2, **distiller_kwargs)``.

    The arguments are :class:`gpd.Distiller`'s (``input_size=`` or ``example_input=`` is
    needed to build D); or pass a ready ``distiller=``.
    """

    def __init__(
        self,
        student: nn.Module | None = None,
        teacher: nn.Module | None = None,
        kd: str | KDMethod = "none",
        ratio: float = 2.0,
        *,
        distiller: Distiller | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        verbose: bool = True,
        **distiller_kwargs: Any,
    ) -> None:
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        if distiller is None:
            if student is None:
                raise ValueError("GPDTask needs a student (or a ready distiller=)")
            distiller = Distiller(student, teacher, kd, ratio, **distiller_kwargs)
        self.trainable_module: nn.Module = distiller.to(self.device)
        self.epoch: float | None = None

    @property
    def distiller(self) -> Distiller:
        return _distiller_in(self.trainable_module)

    def forward(self, input: Any, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``input``: a tensor, or a mapping of keyword arguments (``input_ids``, ...)."""
        losses, logits = self.trainable_module(input, target, epoch=self.epoch)
        return {"loss": total_loss(losses), "output": logits, **losses}

    def prepare_distributed(self, device_ids: list | None = None, **ddp_kwargs: Any) -> GPDTask:
        from torch.nn.parallel import DistributedDataParallel

        self.trainable_module = DistributedDataParallel(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    # timm's task API (TrainingTask subclasses) fixes this signature, which is not nn.Module.compile's
    def compile(  # type: ignore[override]
        self, backend: str = "inductor", mode: str | None = None, **compile_kwargs: Any
    ) -> nn.Module | None:
        compiled = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        self.trainable_module = cast(nn.Module, compiled)  # an OptimizedModule wrapping the module
        return self.get_eval_model()

    def get_eval_model(self, module: nn.Module | None = None, ema: bool = False) -> nn.Module | None:
        resolved = super().get_eval_model(module=module, ema=ema)
        if resolved is None:
            return None
        distiller = _distiller_in(resolved)
        network = distiller.network
        return StudentForward(network) if isinstance(network, DynamicPair) else network

    def get_clip_parameters(self, exclude_head: bool = False) -> list[nn.Parameter]:
        return [p for p in self.distiller.parameters() if p.requires_grad]

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip as the paper's optimizer does (its gradient norm); returns the norm before clipping."""
        return self.distiller.clip_grad_norm_(max_norm)

    def param_groups(
        self, weight_decay: float, *, adaptive: bool = False, decay_norms_and_biases: bool = False
    ) -> list[dict[str, Any]]:
        """The Distiller's optimizer groups (the student's weight-decay rules applied to D;
        ``decay_norms_and_biases=True``: 1-D tensors and biases decay too)."""
        return self.distiller.param_groups(
            weight_decay, adaptive=adaptive, decay_norms_and_biases=decay_norms_and_biases
        )

    def get_task_state(self, module: nn.Module | None = None, ema: bool = False) -> dict[str, Any]:
        owner = module if module is not None else self.get_trainable_module(ema=ema)
        if owner is None:
            return {}
        method = _distiller_in(owner).kd_method.state_dict()  # its heads and buffers, if any
        return {"kd_method": method} if method else {}

    def load_task_state(
        self, state: dict[str, Any] | None, strict: bool = True, module: nn.Module | None = None, ema: bool = False
    ) -> None:
        if not state:
            return
        owner = module if module is not None else self.get_trainable_module(ema=ema)
        if owner is None:
            raise RuntimeError(
                "Cannot load task state before setup_ema()."
                if ema
                else "Cannot load task state without a trainable module."
            )
        state = upgrade_task_state(state)  # a task state of an older gpd: its ReviewKD heads
        if "kd_method" in state:
            _distiller_in(owner).kd_method.load_state_dict(state["kd_method"], strict=strict)

    def export_student(self, ema: bool = False) -> nn.Module:
        """The plain student (branches merged), of its original class, in eval mode."""
        owner = self.get_trainable_module(ema=ema)
        if owner is None:
            raise RuntimeError("no EMA: call setup_ema() first")
        return _distiller_in(owner).export_student()
