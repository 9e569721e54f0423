"""The engine's GPU-minded paths, exercised on CPU: no host sync per step, the non-finite flag
read every N steps, EMA horizons, CPU threads, fp16 autocast with the gradient scaler,
torch.compile of both memory modes, channels_last."""

from __future__ import annotations

import math
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from gpd.config import load_config
from gpd.errors import ConfigError, GPDError
from gpd.io.checkpoint import load_checkpoint
from gpd.training import Trainer, prepare_run_dir
from gpd.training import threads as threads_module
from gpd.training.distributed import DistContext
from gpd.training.ema import ema_decay_per_step
from gpd.training.nonfinite import NonFiniteGuard, NonFiniteLoss

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DRY = ["train.device=cpu", "train.batch_size=16", "train.grad_probe_every=0"]
SMALL = [
    "data.train_subset=512", "data.test_subset=256", "train.batch_size=64", "train.eval_batch_size=256",
    "train.device=cpu", "train.deterministic=true",
]  # fmt: skip
# Tensor methods that copy a value to the host (on a GPU: wait for every queued kernel).
SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextmanager
def count_host_syncs() -> Iterator[Counter[str]]:
    """Count calls of the syncing Tensor methods while the block runs (the mock of a sync)."""
    calls: Counter[str] = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            calls[name] += 1
            return original(self, *args, **kwargs)

        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def dry_trainer(tmp_path: Path, *options: str) -> Trainer:
    cfg = load_config(None, [*DRY, *options, f"output_dir={tmp_path / 'run'}"])
    return Trainer(cfg, prepare_run_dir(cfg), dry_run=True)


# ------------------------------------------------------------------------ host syncs


@pytest.mark.parametrize("memory_mode", ["joint", "sequential"])
def test_a_training_step_reads_nothing_back_from_the_device(memory_mode, tmp_path: Path):
    trainer = dry_trainer(
        tmp_path, "kd.method=dkd", "teacher.model=resnet8", f"teacher.checkpoint={tmp_path / 'missing.pt'}",
        "train.ema=true", "train.grad_clip=1.0", f"train.memory_mode={memory_mode}",
    )  # fmt: skip
    trainer.distiller.train()
    x, y = next(iter(trainer.loop.loaders.train))
    trainer.loop.train_step(x, y, 0.5, where="warm-up")  # first calls may set things up
    with count_host_syncs() as calls:
        for step in range(3):
            out = trainer.loop.train_step(x, y, 0.5 + step, where=f"step {step}")
    assert out is not None and set(out.losses) >= {"ce_student", "kd_student", "kd_dynamic", "sce"}
    assert out.student_logits.shape == (len(y), trainer.data.num_classes)
    assert not calls, f"host syncs in a step: {dict(calls)}"


def test_the_counter_sees_a_sync():  # the mock above can fail
    with count_host_syncs() as calls:
        float(torch.ones(()))
        if torch.ones(()) > 0:
            pass
    assert calls["__float__"] == 1 and calls["__bool__"] == 1


def test_dkd_checks_labels_only_when_asked():
    from gpd.losses import dkd

    logits = torch.randn(4, 5)
    with pytest.raises(ValueError, match="target indices must lie in"):
        dkd(logits, logits, torch.tensor([0, 1, 2, 7]))
    with count_host_syncs() as calls:
        dkd(logits, logits, torch.tensor([0, 1, 2, 3]), check_targets=False)
    assert not calls


# ------------------------------------------------------------------------ the non-finite flag


def _losses(value: float) -> dict[str, torch.Tensor]:
    return {"ce_student": torch.tensor(value), "sce": torch.tensor(0.5)}


def test_the_guard_reads_its_flag_every_n_steps_and_names_the_first_bad_step():
    guard = NonFiniteGuard("stop", 4, DistContext(), torch.device("cpu"))
    due = []
    for step in range(8):
        guard.observe(_losses(float("nan") if step in (5, 6) else 1.0), where=f"step {step}")
        due.append(guard.due())
        if step == 3:
            guard.raise_if_flagged()  # nothing bad yet
    assert due == [False, False, False, True] * 2
    with pytest.raises(NonFiniteLoss, match=r"non-finite at step 5 \(ce_student=nan, sce=0.5\)"):
        guard.raise_if_flagged()


def test_the_skip_policy_reads_every_step_and_forgets_after_it():
    guard = NonFiniteGuard("skip", 50, DistContext(), torch.device("cpu"))
    guard.observe(_losses(float("inf")), where="step 0")
    assert guard.skipped_step() == "step 0 (ce_student=inf, sce=0.5)"
    guard.observe(_losses(1.0), where="step 1")
    assert guard.skipped_step() is None


def test_a_nan_is_caught_at_the_next_read_and_the_checkpoint_kept(tmp_path: Path):
    run = tmp_path / "run"
    cfg = load_config(None, [*SMALL, "train.epochs=2", "train.grad_probe_every=0", "train.nonfinite_check_every=3",
                             f"output_dir={run}"])  # fmt: skip
    trainer = Trainer(cfg, prepare_run_dir(cfg))
    original, calls = trainer.loop.train_module, []

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)  # the losses and the student's logits
        losses = out.losses
        calls.append(1)
        if len(calls) == 8 + 2:  # epoch 2, step 1
            losses["ce_student"] = losses["ce_student"] * float("nan")
        return out

    trainer.loop.train_module = poisoned
    read_at = []
    raise_if_flagged = trainer.loop.guard.raise_if_flagged
    trainer.loop.guard.raise_if_flagged = lambda: (read_at.append(len(calls)), raise_if_flagged())[1]  # type: ignore[method-assign]
    with pytest.raises(GPDError, match=r"non-finite at epoch 2, step 1 \("):
        trainer.fit()
    assert read_at[-1] == 8 + 3  # the first read after the bad step: step 2 of epoch 2 (every 3 steps)
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1


# ------------------------------------------------------------------------ EMA


def test_the_ema_horizon_means_the_same_for_any_batch_size():
    per_epoch = 60_000
    small = ema_decay_per_step(decay=None, epochs=2.0, images=None, images_per_step=64, steps_per_epoch=per_epoch // 64)
    large = ema_decay_per_step(
        decay=None, epochs=2.0, images=None, images_per_step=512, steps_per_epoch=per_epoch // 512
    )
    # the weight left on the start after one epoch of steps: the same, about e^(-1/2)
    assert small ** (per_epoch // 64) == pytest.approx(large ** (per_epoch // 512), rel=1e-2)
    assert small ** (per_epoch // 64) == pytest.approx(math.exp(-0.5), rel=1e-2)
    by_images = ema_decay_per_step(decay=None, epochs=5.0, images=120_000, images_per_step=64, steps_per_epoch=10)
    assert by_images == pytest.approx(small, rel=1e-3)  # ema_images wins over ema_epochs
    assert ema_decay_per_step(decay=0.9998, epochs=1.0, images=None, images_per_step=64, steps_per_epoch=10) == 0.9998
    with pytest.raises(ConfigError, match="not both"):
        ema_decay_per_step(decay=0.9, epochs=1.0, images=100, images_per_step=64, steps_per_epoch=10)


def test_ema_decay_and_warmup_reach_timm(tmp_path: Path):
    trainer = dry_trainer(tmp_path, "train.ema=true", "train.ema_epochs=3")
    steps = len(trainer.loop.loaders.train)
    assert trainer.loop.ema is not None and trainer.loop.ema.use_warmup
    assert trainer.loop.ema.decay == pytest.approx(math.exp(-1 / (3 * steps)))
    old = dry_trainer(tmp_path / "old", "train.ema=true", "train.ema_decay=0.9998", "train.ema_warmup=false")
    assert old.loop.ema is not None and old.loop.ema.decay == 0.9998 and not old.loop.ema.use_warmup


# ------------------------------------------------------------------------ CPU threads


def test_auto_threads_leave_the_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(threads_module, "usable_cores", lambda: 4)
    assert threads_module.auto_threads(busy=0.2) == 4
    assert threads_module.auto_threads(busy=1.0) == 3
    assert threads_module.auto_threads(busy=2.6) == 1
    assert threads_module.auto_threads(busy=9.0) == 1  # at least one
    assert threads_module.auto_threads(local_processes=2, busy=0.0) == 2


def test_threads_setting(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert threads_module.apply_threads("1") == "train.threads" and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert threads_module.apply_threads("auto") == "OMP_NUM_THREADS"
        with pytest.raises(ConfigError, match="train.threads must be auto or a positive number"):
            threads_module.resolve_threads("many")
    finally:
        torch.set_num_threads(before)
    assert 0.0 <= threads_module.busy_cores(0.05) <= (threads_module.os.cpu_count() or 1)


def test_bad_threads_value_is_a_config_error():
    with pytest.raises(ConfigError, match="train.threads"):
        load_config(None, ["train.threads=0"])


# ------------------------------------------------------------------------ precision, compile, layout


def _unscaled_gradients(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    trainer.distiller.train()
    p = trainer.loop.precision
    with p.autocast():
        losses = trainer.distiller(x, y, epoch=0.5).losses
    p.backward(sum(losses.values()))
    p.unscale_(trainer.loop.optimizer)  # back to the true scale
    return torch.cat([q.grad.flatten() for q in trainer.loop.trainable])


def test_fp16_with_the_gradient_scaler_gives_the_fp32_gradients_on_cpu(tmp_path: Path):
    options = ["train.grad_clip=null", "gpd.noise_std=0.0"]
    runs = {
        name: dry_trainer(tmp_path / name, *options, f"train.precision={name}") for name in ("fp32", "fp16", "bf16")
    }
    for trainer in runs.values():
        trainer.distiller.load_state_dict(runs["fp32"].distiller.state_dict())
    assert runs["fp16"].loop.precision.scaler is not None and runs["fp16"].loop.precision.scaler.get_scale() > 1
    x, y = next(iter(runs["fp32"].loop.loaders.train))
    grads = {name: _unscaled_gradients(trainer, x, y) for name, trainer in runs.items()}
    error = {name: float((grads[name] - grads["fp32"]).norm() / grads["fp32"].norm()) for name in ("fp16", "bf16")}
    # Measured: fp16 5.7e-2, bf16 1.2e-1 (16 random images at initialisation, where the SCE term is
    # the difference of two nearly equal softmaxes). fp16 really runs in half precision, with its
    # 11-bit mantissa: closer than bf16's 8 bits, and the scaled gradients come back finite.
    assert torch.isfinite(grads["fp16"]).all()
    assert 1e-4 < error["fp16"] < min(error["bf16"], 0.1)


def test_fp16_runs_through_a_whole_run_and_its_scaler_is_checkpointed(tmp_path: Path):
    run = tmp_path / "run"
    cfg = load_config(
        None,
        # fp16 convolutions on CPU are slow (about 25 s a step of 64 images here): two steps of 16
        [*SMALL, "data.train_subset=32", "train.batch_size=16", "train.epochs=1", "train.precision=fp16",
         f"output_dir={run}"],
    )  # fmt: skip
    row = Trainer(cfg, prepare_run_dir(cfg)).fit()
    assert math.isfinite(row["train_loss"])
    assert load_checkpoint(run / "checkpoint.pt")["scaler"]["scale"] > 0


def _grads_after_a_step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    trainer.loop.train_step(x, y, 0.5, where="step")
    return [p.grad.detach().clone() for p in trainer.loop.trainable]


@pytest.mark.slow
@pytest.mark.parametrize("memory_mode", ["joint", "sequential"])
def test_compiled_steps_give_the_eager_gradients_in_both_memory_modes(memory_mode, tmp_path: Path):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on CPU needs a C compiler")
    options = [f"train.memory_mode={memory_mode}", "train.grad_clip=null", "gpd.noise_std=0.0", "train.lr=1e-9"]
    eager = dry_trainer(tmp_path / "eager", *options)
    compiled = dry_trainer(tmp_path / "compiled", *options, "train.compile=true")
    compiled.distiller.load_state_dict(eager.distiller.state_dict())
    x, y = next(iter(eager.loop.loaders.train))
    for trainer in (eager, compiled):
        trainer.distiller.train()
    for a, b in zip(_grads_after_a_step(eager, x, y), _grads_after_a_step(compiled, x, y)):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)  # fused kernels reorder sums


def test_channels_last_steps_give_the_contiguous_gradients(tmp_path: Path):
    options = ["train.grad_clip=null", "gpd.noise_std=0.0"]
    last = dry_trainer(tmp_path / "last", *options, "train.channels_last=true")
    plain = dry_trainer(tmp_path / "plain", *options, "train.channels_last=false")
    plain.distiller.load_state_dict(last.distiller.state_dict())
    assert any(p.is_contiguous(memory_format=torch.channels_last) and p.dim() == 4 and not p.is_contiguous()
               for p in last.loop.trainable)  # fmt: skip
    x, y = next(iter(last.loop.loaders.train))
    for trainer in (last, plain):
        trainer.distiller.train()
    grads_last = _grads_after_a_step(last, x.contiguous(memory_format=torch.channels_last), y)
    for a, b in zip(_grads_after_a_step(plain, x, y), grads_last):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)  # other kernels, other summation order
