"""One prepared check of gpd on a CUDA GPU: exactness, fp32/bf16/fp16 steps, compile, DDP, throughput, memory.

No GPU has run gpd's test suite; this script is what to run the first time one is lent
(about 5 minutes on one GPU). It writes a markdown table (``--out``, default
``gpu_check.md``) and prints it:

* expansion exactness on the device: tv resnet18 and timm deit_tiny at r = 2, D and
  the student view against the student (relative errors);
* training steps of the ResNet-34 -> ResNet-18 and DeiT-S -> DeiT-Ti pairs with DKD, in
  fp32, bf16 and fp16 (autocast, fp16 with the gradient scaler): images/s with GPD next to
  the plain student trained alone, peak memory (torch.cuda.max_memory_allocated), and
  whether every loss and gradient stayed finite;
* ``torch.compile`` of the GPD step (gradients compared with eager on one batch);
* a 1-process DDP step in a real process group (NCCL on CUDA), gradients against a plain step.

    python benchmarks/gpu_check.py                 # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run       # the same code paths on CPU, tiny sizes (CI)

``--dry-run`` uses the CPU, 32 px images, batch 2 and 2 steps, skips fp16 (it needs CUDA)
and runs DDP with gloo; the numbers are not measurements, only a check that every path runs.
Exit code 1 when a check fails, 2 when no GPU is present without ``--dry-run``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import gpd
from gpd.models import create_model
from gpd.models.registry import sized_kwargs
from gpd.training.precision import Precision

PAIRS = {
    "resnet": ("tv:resnet34", "tv:resnet18"),
    "deit": ("timm:deit_small_patch16_224", "timm:deit_tiny_patch16_224"),
}
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class Settings:
    device: torch.device
    size: int
    batch: int
    steps: int
    warmup: int
    dry_run: bool


def build(name: str, settings: Settings) -> torch.nn.Module:
    kwargs = sized_kwargs(name, {}, (3, settings.size, settings.size))
    return create_model(name, num_classes=100, in_chans=3, **kwargs)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_expansion(settings: Settings) -> list[list[str]]:
    rows = []
    for name in ("tv:resnet18", "timm:deit_tiny_patch16_224"):
        torch.manual_seed(0)
        student = build(name, settings).to(settings.device).eval()
        x = torch.randn(2, 3, settings.size, settings.size, device=settings.device)
        started = time.perf_counter()
        model = gpd.expand(student, 2, example_input=x)
        report = model.report
        rows.append([f"expansion {name}", "pass", f"D {report.dynamic_error:.1e}, student view {report.student_error:.1e}",
                     f"{time.perf_counter() - started:.1f} s"])  # fmt: skip
    return rows


def throughput(distiller: gpd.Distiller, settings: Settings, precision: str) -> tuple[float, float | None, bool]:
    """(images/s, peak memory in GiB or None on CPU, all finite) of SGD steps on random batches."""
    device = settings.device
    distiller = distiller.to(device).train()
    optimizer = torch.optim.SGD(distiller.param_groups(5e-4), lr=0.01, momentum=0.9)
    prec = Precision(precision, device)
    x = torch.randn(settings.batch, 3, settings.size, settings.size, device=device)
    y = torch.randint(0, 100, (settings.batch,), device=device)
    finite = True
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(settings.warmup + settings.steps):
        if step == settings.warmup:
            synchronize(device)
            started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with prec.autocast():
            loss = distiller(x, y, epoch=1.0).loss
        prec.backward(loss)
        prec.unscale_(optimizer)
        distiller.clip_grad_norm_(5.0)
        finite &= bool(torch.isfinite(loss)) and all(
            bool(torch.isfinite(p.grad).all()) for p in distiller.parameters() if p.grad is not None
        )
        prec.step(optimizer)
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return settings.batch * settings.steps / seconds, peak, finite


def check_steps(settings: Settings) -> list[list[str]]:
    rows = []
    for key, (teacher_name, student_name) in PAIRS.items():
        for precision in PRECISIONS:
            if precision == "fp16" and settings.device.type != "cuda":
                rows.append([f"step {key} {precision}", "skipped", "fp16 with the gradient scaler needs CUDA", ""])
                continue
            torch.manual_seed(0)
            teacher, student = build(teacher_name, settings), build(student_name, settings)
            size = (3, settings.size, settings.size)
            plain = gpd.Distiller(copy.deepcopy(student), dynamic_teacher=False, input_size=size)
            with_gpd = gpd.Distiller(student, teacher, kd="dkd", ratio=2, input_size=size)
            plain_speed, _, plain_ok = throughput(plain, settings, precision)
            gpd_speed, peak, gpd_ok = throughput(with_gpd, settings, precision)
            memory = f", peak {peak:.2f} GiB" if peak is not None else ""
            rows.append([f"step {key} DKD+GPD {precision}", "pass" if plain_ok and gpd_ok else "FAIL",
                         f"{gpd_speed:.0f} img/s with GPD vs {plain_speed:.0f} img/s plain student "
                         f"({gpd_speed / plain_speed:.2f}x){memory}; losses and gradients finite: {plain_ok and gpd_ok}", ""])  # fmt: skip
            del plain, with_gpd
            if settings.device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def check_compile(settings: Settings) -> list[list[str]]:
    torch.manual_seed(0)
    student = build("tv:resnet18", settings)
    eager = gpd.Distiller(student, ratio=2, input_size=(3, settings.size, settings.size), noise_std=0.0).to(
        settings.device
    )
    # eval mode: BatchNorm with running statistics, so that the comparison is well conditioned (in train
    # mode on small batches even a plain resnet18's compiled gradients differ from eager ones by ~1e-2)
    eager.eval()
    compiled = copy.deepcopy(eager)
    x = torch.randn(settings.batch, 3, settings.size, settings.size, device=settings.device)
    y = torch.randint(0, 100, (settings.batch,), device=settings.device)
    started = time.perf_counter()
    eager(x, y).loss.backward()
    torch.compile(compiled)(x, y).loss.backward()
    worst = max(
        float((b.grad - a.grad).abs().max() / a.grad.abs().max().clamp_min(1e-12))
        for a, b in zip(eager.parameters(), compiled.parameters())
        if a.grad is not None
    )
    status = "pass" if worst < 1e-3 else "FAIL"
    return [["torch.compile GPD step (resnet18, eval-mode BatchNorm)", status, f"largest relative gradient difference vs eager {worst:.1e}",
             f"{time.perf_counter() - started:.1f} s"]]  # fmt: skip


def check_ddp(settings: Settings) -> list[list[str]]:
    """One process in a real process group (NCCL on CUDA, gloo on CPU): DDP's gradients equal a plain step's."""
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    backend = "nccl" if settings.device.type == "cuda" else "gloo"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        student = build("tv:resnet18", settings)
        distiller = gpd.Distiller(student, ratio=2, input_size=(3, settings.size, settings.size)).to(settings.device)
        reference = copy.deepcopy(distiller)
        ids = [settings.device.index or 0] if settings.device.type == "cuda" else None
        wrapped = DistributedDataParallel(distiller, device_ids=ids)
        x = torch.randn(settings.batch, 3, settings.size, settings.size, device=settings.device)
        y = torch.randint(0, 100, (settings.batch,), device=settings.device)
        wrapped(x, y).loss.backward()
        reference(x, y).loss.backward()
        worst = max(
            float((a.grad - b.grad).abs().max() / b.grad.abs().max().clamp_min(1e-12))
            for a, b in zip(distiller.parameters(), reference.parameters())
            if b.grad is not None
        )
    finally:
        dist.destroy_process_group()
    status = "pass" if worst < 1e-4 else "FAIL"
    return [[f"DDP, 1 process ({backend})", status, f"gradients against a plain step: largest relative difference {worst:.1e}",
             f"{time.perf_counter() - started:.1f} s"]]  # fmt: skip


def run_check(name: str, fn: Callable[[], list[list[str]]]) -> list[list[str]]:
    try:
        return fn()
    except Exception as err:
        return [[name, "FAIL", f"{type(err).__name__}: {' '.join(str(err).split())[:300]}", ""]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check that every path runs")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.md"), help="markdown report (default gpu_check.md)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: error: no CUDA device; run on a GPU machine, or pass --dry-run to check the paths on CPU",
            file=sys.stderr,
        )
        return 2
    if args.dry_run:
        settings = Settings(torch.device("cpu"), 32, 2, 2, 1, True)
    else:
        settings = Settings(torch.device("cuda"), args.size, args.batch, 10, 3, False)
    rows = []
    rows += run_check("expansion", lambda: check_expansion(settings))
    rows += run_check("steps", lambda: check_steps(settings))
    rows += run_check("torch.compile", lambda: check_compile(settings))
    rows += run_check("DDP", lambda: check_ddp(settings))
    device = torch.cuda.get_device_name(0) if settings.device.type == "cuda" else "CPU (dry run: not a measurement)"
    lines = [
        f"# gpu_check: {device}",
        "",
        f"torch {torch.__version__}, {settings.size} px, batch {settings.batch}, {settings.steps} timed steps "
        f"after {settings.warmup} warm-up; `python benchmarks/gpu_check.py{' --dry-run' if args.dry_run else ''}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| check | result | detail | time |",
        "|---|---|---|---|",
        *[f"| {' | '.join(row)} |" for row in rows],
    ]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    return 1 if any(row[1] == "FAIL" for row in rows) else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(min(os.cpu_count() or 1, 2)))
    sys.exit(main())
