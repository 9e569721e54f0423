"""Start, resume or dry-run a training run: one call per process, torchrun or not."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpd.config import Config, load_config
from gpd.errors import ConfigError
from gpd.io.layout import RunLayout
from gpd.training.distributed import DistContext, barrier, init_distributed, run_on_main, shutdown_distributed
from gpd.training.host_memory import keep_host_memory
from gpd.training.policy import DRY_RUN
from gpd.training.run_dir import choose_run_dir, create_run_dir, prepare_run_dir, rewrite_config
from gpd.training.threads import apply_threads
from gpd.training.trainer import Trainer

if TYPE_CHECKING:
    import torch

# What may change when a run is resumed: nothing that changes the computation of a step.
RESUMABLE_KEYS = (
    "train.epochs",
    "train.device",
    "train.eval_batch_size",
    "train.threads",
    "train.log_interval_s",
    "train.keep_host_memory",
    "data.root",
)
# What may change only with --inexact-resume, on runs that are not train.deterministic: the
# augmentation's random numbers are drawn from other streams with and without worker processes.
INEXACT_RESUMABLE_KEYS = ("data.num_workers",)


def local_processes(ctx: DistContext) -> int:
    """The training processes on this machine (torchrun's LOCAL_WORLD_SIZE), which share its cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if ctx.enabled else 1


def resume_config(run_dir: Path, overrides: list[str], *, inexact: bool = False) -> Config:
    """The config a run was started with, plus the few overrides a resume may make.

    ``inexact``: also accept changes of INEXACT_RESUMABLE_KEYS (the user's explicit choice),
    except for a run with ``train.deterministic=true``, which promised bit-exact resumes."""
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such run directory")
    layout = RunLayout(run_dir)
    if not layout.config.is_file() or not layout.checkpoint.is_file():
        raise ConfigError(
            f"--resume {run_dir}: not a resumable run (it needs {layout.CONFIG} and {layout.CHECKPOINT}, written after "
            "the first epoch); start it again instead"
        )
    for item in overrides:
        key = item.split("=", 1)[0]
        if key not in RESUMABLE_KEYS + INEXACT_RESUMABLE_KEYS:
            raise ConfigError(
                f"--resume keeps the run's config; '{key}' cannot change (allowed: {', '.join(RESUMABLE_KEYS)})"
            )
    before = load_config(str(layout.config), [])
    cfg = load_config(str(layout.config), overrides)
    for key in INEXACT_RESUMABLE_KEYS:
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) == getattr(getattr(before, section), name):
            continue
        if not inexact or cfg.train.deterministic:
            raise ConfigError(
                f"--resume: {key} cannot change, the run would not continue bit-exactly (augmentation draws other "
                "random numbers with and without worker processes); "
                + ("train.deterministic=true runs resume exactly or not at all"
                   if inexact else "pass --inexact-resume to accept that")
            )  # fmt: skip
    cfg.output_dir = str(run_dir)
    return cfg


def launch(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` (or continue it, ``resume``); under torchrun every process calls this.

    The run directory is checked first and created only once the data, the models and
    the losses are built, so a configuration error leaves nothing behind."""
    ctx, device = init_distributed(cfg.train.device)
    try:
        run_dir = Path(cfg.output_dir) if resume else run_on_main(lambda: choose_run_dir(cfg, overwrite), ctx)  # type: ignore[arg-type]
        with _process_settings(cfg, ctx, device) as reasons:
            trainer = Trainer(cfg, run_dir, ctx=ctx, device=device)
            trainer.threads_reason, trainer.host_memory_reason = reasons
            if resume:
                trainer.load_state(RunLayout(run_dir).checkpoint)
                run_on_main(lambda: rewrite_config(cfg), ctx)
            else:
                run_on_main(lambda: create_run_dir(cfg, run_dir, overwrite), ctx)
            result = trainer.fit()
            del trainer
        barrier(ctx)  # leave together: only then is the process group torn down
        return result
    finally:
        shutdown_distributed()


@contextmanager
def _process_settings(cfg: Config, ctx: DistContext, device: torch.device) -> Iterator[tuple[str, str]]:
    """The process-wide settings of an entry point: CPU threads, and freed host memory kept for reuse
    (``train.keep_host_memory`` applies to CPU training, whose tensors are host memory) until the run ends.

    Yields why each is what it is, for the run's log."""
    threads = apply_threads(cfg.train.threads, local_processes(ctx))
    with keep_host_memory(cfg.train.keep_host_memory and device.type == "cpu") as host_memory:
        yield threads, host_memory


def dry_run(cfg: Config) -> None:
    """Build everything and run a couple of steps in a temporary directory; keep nothing."""
    ctx, device = init_distributed(cfg.train.device)
    try:
        with tempfile.TemporaryDirectory(prefix="gpd-dry-run-") as tmp:
            cfg.output_dir = str(Path(tmp) / "run")
            run_dir = run_on_main(lambda: prepare_run_dir(cfg), ctx)
            with _process_settings(cfg, ctx, device) as reasons:
                trainer = Trainer(cfg, run_dir, DRY_RUN, ctx=ctx, device=device)
                trainer.threads_reason, trainer.host_memory_reason = reasons
                trainer.fit()
                del trainer
            barrier(ctx)
    finally:
        shutdown_distributed()
