"""Training-step cost of GPD next to the KD method it is added to, measured side by side.

For each teacher -> student pair and each KD method (KD, DKD, ReviewKD) it measures a
training step of the method alone (``dynamic_teacher=False``) and with GPD (r = 2):
the median step time after warm-up (zero_grad, forward, backward of the summed loss
with ``gpd.training.backward.joint_backward``, SGD step), the peak memory, and the FLOPs of
the step (forward and backward of everything, the static teacher's forward included)
counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matrix products
and attention; elementwise work, normalisation and the optimizer count zero). The table
puts the measured GPD/alone time ratio next to the FLOP ratio; their quotient is the
cost beyond the extra compute (1.00 = none; the target is at most 1.10). On CPU the
per-step CPU time of the process is reported besides the wall time: with one thread
(the CPU default) it is not inflated by other processes on a shared machine.

Further tables: where GPD's extra time goes (the student's forward and backward with
its weights read out of D, against the same student as a plain module; D alone, a
plain wide network, and its throughput against the student's), the exported student's
inference time against a freshly built plain model with the same weights, and the
training cost of six-branch blocks (``branches="orepa"``) for the CIFAR pair.

Every configuration runs in its own process, so its peak memory is its own. On CUDA
the step is bracketed by torch.cuda.synchronize and the peak is
torch.cuda.max_memory_allocated (weights and optimizer state included); on CPU it is
the peak resident set during the steps minus the resident set just before the first
step (what the step adds: activations, gradients, momentum, workspace).

    python benchmarks/speed.py                 # CPU, the three pairs (about 20 minutes on 2 cores)
    python benchmarks/speed.py --quick         # CIFAR pair only, batch 4, 2 steps: about a minute
    python benchmarks/speed.py --device cuda --size 32,224 --precision bf16
    python benchmarks/speed.py --hf            # transformers BERT and ViT: the student view against the
                                               # plain model, forward + backward (benchmarks/speed_hf.py)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

METHODS = ("kd", "dkd", "reviewkd")


@dataclass(frozen=True)
class Pair:
    key: str
    teacher: str
    student: str
    classes: int
    imagenet: bool  # takes the ImageNet size (--size); the CIFAR pair takes the CIFAR size
    vit: bool = False
    cpu_batch: int = 16
    gpu_batch: int = 128
    skip: dict[str, str] = field(default_factory=dict)  # method -> why it does not apply


PAIRS = (
    Pair("cifar", "resnet32x4", "resnet8x4", 100, imagenet=False, cpu_batch=32, gpu_batch=256),
    Pair("resnet", "tv:resnet34", "tv:resnet18", 1000, imagenet=True),
    Pair(
        "deit",
        "timm:deit_small_patch16_224",
        "timm:deit_tiny_patch16_224",
        1000,
        imagenet=True,
        vit=True,
        skip={
            "reviewkd": "gpd's ReviewKD fuses (N, C, H, W) stage maps; DeiT's stages (timm feature_info: "
            "blocks.i) give (N, 1 + tokens, C) sequences with a class token and no grid size, so it does not apply"
        },
    ),
)
PAIR_BY_KEY = {pair.key: pair for pair in PAIRS}


# ----------------------------------------------------------------------------- worker side


def _rss_mb(field_name: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Set the peak resident set (VmHWM) to the current one (Linux); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    peak = _rss_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Env:
    """Device, precision and memory format of one worker."""

    def __init__(self, device: str, precision: str, threads: int, channels_last: bool) -> None:
        import torch

        torch.set_num_threads(threads)
        self.device = device
        self.channels_last = channels_last
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.autocast = (lambda: torch.autocast(device, dtype=dtype)) if dtype is not None else nullcontext
        self.scaler = torch.amp.GradScaler(device) if precision == "fp16" else None

    def place(self, module, vit: bool):
        import torch

        module = module.to(self.device)
        if self.channels_last and not vit:
            module = module.to(memory_format=torch.channels_last)
        return module

    def batch(self, pair: Pair, batch: int, size: int):
        import torch

        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size, size, generator=gen).to(self.device)
        if self.channels_last and not pair.vit:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, pair.classes, (batch,), generator=gen).to(self.device)
        return x, y


def _models(pair: Pair, size: int, teacher: bool = True):
    import torch

    from gpd.models import create_model

    kwargs = {"img_size": size} if pair.vit else {}
    torch.manual_seed(0)
    student = create_model(pair.student, num_classes=pair.classes, in_chans=3, **kwargs)
    static = create_model(pair.teacher, num_classes=pair.classes, in_chans=3, **kwargs) if teacher else None
    return student, static


def flop_counter():
    """FlopCounterMode that also counts the CPU flash-attention kernels (which torch's registry leaves out)."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    formulas = {
        "_scaled_dot_product_flash_attention_for_cpu":
            lambda q, k, v, *args, out_shape=None, **kwargs: fc.sdpa_flop_count(q, k, v),
        "_scaled_dot_product_flash_attention_for_cpu_backward":
            lambda grad, q, k, v, *args, out_shape=None, **kwargs: fc.sdpa_backward_flop_count(grad, q, k, v),
    }  # fmt: skip
    mapping = {}
    for name, formula in formulas.items():
        op = getattr(aten, name, None)
        if op is not None and op not in fc.flop_registry:
            mapping[op] = formula
    return fc.FlopCounterMode(display=False, custom_mapping=mapping)


def step_worker(pair: Pair, method: str, gpd_on: bool, branches: str, size: int, batch: int, steps: int,
                warmup: int, env: Env) -> dict:  # fmt: skip
    """Median step time, step peak memory and step FLOPs of one configuration."""
    import torch

    from gpd.distill import Distiller
    from gpd.training.backward import joint_backward
    from gpd.training.host_memory import keep_host_memory, release_to_system

    student, static = _models(pair, size)
    distiller = Distiller(student, static, kd=method, ratio=2, dynamic_teacher=gpd_on, input_size=(3, size, size),
                          branches=None if branches == "none" else branches)  # fmt: skip
    distiller = env.place(distiller, pair.vit).train()
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, y = env.batch(pair, batch, size)
    epoch = 1000.0  # past any KD warm-up ramp, so every loss term is live

    def backward(loss):
        (env.scaler.scale(loss) if env.scaler is not None else loss).backward()

    optimizer_cpu: list[float] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        joint_backward(distiller, x, y, epoch, env.autocast, backward)
        cpu_started = time.process_time()
        if env.scaler is not None:
            env.scaler.step(optimizer)
            env.scaler.update()
        else:
            optimizer.step()
        optimizer_cpu.append(time.process_time() - cpu_started)

    times, cpu_times = [], []
    with keep_host_memory(env.device == "cpu"):  # as gpd train does on the CPU (train.keep_host_memory)
        for index in range(warmup + steps):
            env.sync()
            started, cpu_started = time.perf_counter(), time.process_time()
            step()
            env.sync()
            if index >= warmup:
                times.append(time.perf_counter() - started)
                cpu_times.append(time.process_time() - cpu_started)
    optimizer_ms = 1000 * statistics.median(optimizer_cpu[warmup:])  # the timed steps (the two below come later)
    # The memory one more step adds, with glibc's defaults back (memory kept for reuse would hide it): the
    # gradients, activations and temporaries of a step; the optimizer's state exists from the first step on.
    if env.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = 0.0  # the peak of the whole process, as before
    else:
        release_to_system()
        _reset_peak_rss()
        before = _rss_mb("VmRSS") or 0.0
    step()
    env.sync()
    peak = (torch.cuda.max_memory_allocated() / 2**20 if env.device == "cuda" else _peak_rss_mb()) - before
    with flop_counter() as counter:
        step()
    env.sync()
    trainable = sum(p.numel() for p in distiller.parameters() if p.requires_grad)
    return {
        "paths": _branch_paths(distiller),
        "least_branch_flops": _least_branch_flops(distiller),
        "optimizer_ms": optimizer_ms,
        "step_ms": 1000 * statistics.median(times),
        "min_ms": 1000 * min(times),
        "cpu_ms": 1000 * statistics.median(cpu_times),
        "peak_mb": peak,
        "flops": counter.get_total_flops(),
        "params": trainable,
    }


def _branch_paths(distiller) -> dict[str, dict[str, int]]:
    """How many six-branch blocks of D and of the student took each path in the last training step."""
    from collections import Counter

    from gpd.branches import OREPAConv2d

    gpd = getattr(distiller, "gpd", None)
    parts = {"D": gpd.dynamic, "student": gpd.student} if gpd is not None else {"student": distiller}
    return {
        role: dict(Counter(m.last_path for m in module.modules() if isinstance(m, OREPAConv2d)))
        for role, module in parts.items()
    }


def _least_branch_flops(distiller) -> float:
    """FLOPs that branches 3 and 5 of every six-branch block cost at least in the last step, on either path."""
    from gpd.branches import OREPAConv2d
    from gpd.branches.paths import least_training_macs

    shapes = [getattr(m, "last_shape", None) for m in distiller.modules() if isinstance(m, OREPAConv2d)]
    return 2.0 * sum(least_training_macs(shape) for shape in shapes if shape is not None)  # D's and the student's


def extras_worker(pair: Pair, size: int, batch: int, steps: int, warmup: int, env: Env) -> dict:
    """Where a GPD step's time goes, and the exported student's inference time.

    Training (forward + CE + backward, no optimizer): the student as a plain module; the
    student through ``GPDModel.forward_student`` (weights read out of D on every call);
    D alone, which is a plain wide network. Their FLOPs give each one's throughput.
    ``derive``: reading the student's weights out of D (forward only). Inference: eval
    forward of ``Distiller.export_student()`` against a fresh model of the same
    architecture with the exported state_dict loaded strictly. The cases alternate
    within each round, so machine noise hits them alike; medians over ``steps`` rounds.
    """
    import torch
    import torch.nn.functional as F

    from gpd.distill import Distiller

    student, _ = _models(pair, size, teacher=False)
    distiller = Distiller(student, ratio=2, input_size=(3, size, size))
    gpd = env.place(distiller.network, pair.vit).train()
    exported = env.place(distiller.export_student(), pair.vit).eval()
    fresh, _ = _models(pair, size, teacher=False)
    fresh.load_state_dict(exported.state_dict(), strict=True)
    fresh = env.place(fresh, pair.vit).eval()
    plain = env.place(distiller.export_student(), pair.vit).train()  # same weights, a trainable plain module
    x, y = env.batch(pair, batch, size)
    grads = [*gpd.parameters(), *plain.parameters()]

    def train(forward):
        def run():
            for p in grads:
                p.grad = None
            with env.autocast():
                loss = F.cross_entropy(forward(x), y)
            loss.backward()

        return run

    def derive():
        with env.autocast():
            gpd.student_parameters()

    def infer(model):
        def run():
            with torch.inference_mode(), env.autocast():
                model(x)

        return run

    training = {
        "student_train": train(plain),
        "view_train": train(gpd.forward_student),
        "d_train": train(gpd.forward_dynamic),
        "derive": derive,
    }
    inference = {"fresh_infer": infer(fresh), "exported_infer": infer(exported)}
    flops = {}
    for name in ("student_train", "d_train"):
        with flop_counter() as counter:
            training[name]()
        flops[name] = counter.get_total_flops()
    result = {f"{name}_flops": value for name, value in flops.items()}
    # inference is cheap and the ratio should be 1.00: many more rounds than training
    for cases, rounds in ((training, steps), (inference, 5 * steps)):
        for fn in cases.values():
            for _ in range(warmup):
                fn()
        wall: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, fn in cases.items():
                env.sync()
                started, cpu_started = time.perf_counter(), time.process_time()
                fn()
                env.sync()
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - cpu_started)
        result.update({name: 1000 * statistics.median(values) for name, values in wall.items()})
        result.update({f"{name}_cpu": 1000 * statistics.median(values) for name, values in cpu.items()})
    return result


# ----------------------------------------------------------------------------- driver side


def _run_worker(spec: dict, args: argparse.Namespace) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec), "--device", args.device,
               "--precision", args.precision, "--threads", str(args.threads)]  # fmt: skip
    if not args.channels_last:
        command.append("--no-channels-last")
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"worker {spec} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _best(spec: dict, args: argparse.Namespace) -> dict:
    """The run with the lowest median step time over ``--rounds`` runs (peak memory: the lowest)."""
    runs = [_run_worker(spec, args) for _ in range(args.rounds)]
    best = dict(min(runs, key=lambda r: r["step_ms"]))
    best["peak_mb"] = min(r["peak_mb"] for r in runs)
    return best


def _gflop(flops: float) -> str:
    return f"{flops / 1e9:.1f}"


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default=None,
                        help="image size: one number for every pair, or CIFAR,ImageNet (default 32,112)")  # fmt: skip
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3)")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size for every pair (default: CPU 32 CIFAR / 16 ImageNet; CUDA 256 / 128)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: 1 on CPU, where one thread's CPU time is robust to "
                        "other load on a shared machine; all cores on CUDA)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="runs per configuration; the fastest counts")
    parser.add_argument("--pairs", default=None, help="comma-separated subset of: " + ", ".join(PAIR_BY_KEY))
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of kd, dkd, reviewkd")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="keep CNNs and their inputs contiguous (default: channels_last)")  # fmt: skip
    parser.add_argument("--no-extras", dest="extras", action="store_false",
                        help="skip the breakdown, export and branch tables")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="CIFAR pair only, batch 4, 2 steps: about a minute")
    parser.add_argument("--branch-cost", action="store_true",
                        help="only the cost of six-branch blocks with DKD + GPD: the ResNet pair at 112 px (batch "
                        "16 and 64) and 224 px (batch 16), the CIFAR pair at 32 px (batch 32); --cases to pick")  # fmt: skip
    parser.add_argument("--cases", default=None,
                        help="with --branch-cost: comma-separated PAIR:SIZE:BATCH, e.g. resnet:112:16,cifar:32:32")  # fmt: skip
    parser.add_argument("--hf", action="store_true",
                        help="only the student view of a small transformers BERT and ViT against the plain "
                        "model, forward + backward (default batch 16, 20 rounds; with --quick batch 2, 2 rounds)")  # fmt: skip
    parser.add_argument("--hf-models", default="bert,vit", help="with --hf: comma-separated subset of bert, vit")
    parser.add_argument("--no-keep-host-memory", dest="keep_host_memory", action="store_false",
                        help="with --hf on the CPU: glibc's default allocation (large freed blocks go back to the "
                        "system and fault in again) instead of gpd train's train.keep_host_memory")  # fmt: skip
    parser.add_argument("--seq", type=int, default=128, help="with --hf: BERT's sequence length")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else (os.cpu_count() or 1)
    if args.precision == "fp16" and args.device != "cuda":
        parser.error("--precision fp16 needs --device cuda (CPU autocast: use bf16)")

    if args.worker:
        spec = json.loads(args.worker)
        env = Env(args.device, args.precision, args.threads, args.channels_last)
        kind = spec.pop("kind")
        if kind == "hf":
            from speed_hf import hf_worker  # benchmarks/, the script's own folder

            print(json.dumps(hf_worker(**spec, env=env)))
            return
        spec["pair"] = PAIR_BY_KEY[spec["pair"]]
        result = step_worker(**spec, env=env) if kind == "step" else extras_worker(**spec, env=env)
        print(json.dumps(result))
        return

    if args.hf:
        hf_main(args, parser)
        return
    if args.quick:
        args.pairs = args.pairs or "cifar"
        args.batch = args.batch or 4
        args.steps = args.steps or 2
        args.warmup = args.warmup if args.warmup is not None else 1
    args.steps = args.steps or 10
    args.warmup = args.warmup if args.warmup is not None else 3
    try:
        sizes = [int(s) for s in (args.size or "32,112").split(",")]
    except ValueError:
        parser.error(f"--size takes N or CIFAR,IMAGENET, got {args.size!r}")
    cifar_size, imagenet_size = (sizes[0], sizes[0]) if len(sizes) == 1 else sizes[:2]
    unknown_pairs = [key for key in (args.pairs or "").split(",") if key and key.strip() not in PAIR_BY_KEY]
    if unknown_pairs:
        parser.error(f"unknown pairs {unknown_pairs}; use {', '.join(PAIR_BY_KEY)}")
    pairs = [PAIR_BY_KEY[key.strip()] for key in args.pairs.split(",")] if args.pairs else list(PAIRS)
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; use {', '.join(METHODS)}")

    import torch

    if args.branch_cost:
        branch_cost_table(args, args.cases or BRANCH_CASES)
        return

    def size_of(pair: Pair) -> int:
        return imagenet_size if pair.imagenet else cifar_size

    def batch_of(pair: Pair) -> int:
        return args.batch or (pair.gpu_batch if args.device == "cuda" else pair.cpu_batch)

    cpu = args.device == "cpu"
    device_name = torch.cuda.get_device_name() if not cpu else _cpu_model()
    started = time.time()
    print(f"# GPD training-step cost, r = 2 ({time.strftime('%Y-%m-%d %H:%M')})\n")
    print(f"device {args.device} ({device_name}); torch {torch.__version__}; precision {args.precision}; "
          f"threads {args.threads}; {'channels_last' if args.channels_last else 'contiguous'} CNNs; "
          f"{args.warmup} warm-up + {args.steps} timed steps, median; rounds {args.rounds}; "
          f"load average at start {_load()}\n")  # fmt: skip
    print(f"command: {' '.join(['python', os.path.relpath(__file__), *sys.argv[1:]])}\n")
    if cpu and not args.quick and any(p.imagenet for p in pairs):
        print(f"(CPU: the ImageNet pairs run at batch {batch_of(PAIRS[1])} and the CIFAR pair at batch "
              f"{batch_of(PAIRS[0])} so that the whole run stays near 20 minutes on 2 cores; CPU step times "
              "say nothing about GPU step times.)\n")  # fmt: skip

    memory = "peak CUDA MB" if not cpu else "step peak RSS MB"
    print("## Step time and FLOPs: each method alone and with GPD\n")
    print("A step: zero_grad, forward of the static teacher (no grad) and of the student (and D), backward of "
          "the summed loss (joint_backward), SGD step. FLOPs: FlopCounterMode over one step. "
          "time ratio / FLOP ratio = 1.00 means no cost beyond the extra FLOPs (target: at most 1.10)."
          + (" CPU-time columns: the process's CPU time per step (one thread: not inflated by other load)." if cpu else "")
          + "\n")  # fmt: skip
    cpu_head = " | alone CPU ms | +GPD CPU ms | CPU-time ratio | CPU-time ratio / FLOP ratio" if cpu else ""
    print(f"| pair | input, batch | method | alone ms | +GPD ms | measured GPD/alone time ratio | FLOP ratio "
          f"| time ratio / FLOP ratio{cpu_head} | alone GFLOP | +GPD GFLOP | {memory} alone | {memory} +GPD |")  # fmt: skip
    print("|---" * (12 + 4 * cpu) + "|")
    rows: dict[tuple[str, str, bool], dict] = {}
    skipped = []
    branch_pair = pairs[0] if not pairs[0].vit and "kd" in methods else None  # branch table: first CNN pair, KD
    for pair in pairs:
        size, batch = size_of(pair), batch_of(pair)
        label = f"{pair.teacher} -> {pair.student}"
        for method in methods:
            if method in pair.skip:
                print(f"| {label} | {size} px, {batch} | {method} |" + " n/a |" * (9 + 4 * cpu))
                skipped.append(f"{label}, {method}: {pair.skip[method]}")
                continue
            with_branches = args.extras and method == "kd" and pair is branch_pair
            for gpd_on in (False, True):
                for branches in ("none", "orepa") if with_branches else ("none",):  # adjacent in time
                    spec = dict(kind="step", pair=pair.key, method=method, gpd_on=gpd_on, branches=branches,
                                size=size, batch=batch, steps=args.steps, warmup=args.warmup)  # fmt: skip
                    key = (pair.key, method, gpd_on) if branches == "none" else (pair.key, "kd+orepa", gpd_on)
                    rows[key] = _best(spec, args)
            alone, gpd = rows[pair.key, method, False], rows[pair.key, method, True]
            time_ratio = gpd["step_ms"] / alone["step_ms"]
            flop_ratio = gpd["flops"] / alone["flops"]
            cpu_cells = ""
            if cpu:
                cpu_ratio = gpd["cpu_ms"] / alone["cpu_ms"]
                cpu_cells = (f" | {alone['cpu_ms']:.0f} | {gpd['cpu_ms']:.0f} | {cpu_ratio:.2f} "
                             f"| {cpu_ratio / flop_ratio:.2f}")  # fmt: skip
            print(f"| {label} | {size} px, {batch} | {method} | {alone['step_ms']:.0f} | {gpd['step_ms']:.0f} "
                  f"| {time_ratio:.2f} | {flop_ratio:.2f} | {time_ratio / flop_ratio:.2f}{cpu_cells} "
                  f"| {_gflop(alone['flops'])} | {_gflop(gpd['flops'])} | {alone['peak_mb']:.0f} | {gpd['peak_mb']:.0f} |",
                  flush=True)  # fmt: skip
    for line in skipped:
        print(f"\n(skipped) {line}.")
    if cpu:
        print("\n(CPU memory: peak resident set during the steps minus the resident set before the first step.)")

    if args.extras:
        extras = {}
        for pair in pairs:
            spec = dict(kind="extras", pair=pair.key, size=size_of(pair), batch=batch_of(pair), steps=args.steps,
                        warmup=args.warmup)  # fmt: skip
            extras[pair.key] = _run_worker(spec, args)
        suffix = "_cpu" if cpu else ""
        print("\n## Where the extra time goes: the student view and D\n")
        print("Forward + CE + backward (no optimizer), the cases alternating within each round, median"
              + (" CPU time" if cpu else "") + ". student: the student as a plain module; view: the same "
              "student with its weights read out of D on every call (GPDModel.forward_student); D: the dynamic "
              "teacher alone, a plain wide network; derive: reading the student's weights out of D, forward "
              "only.\n")  # fmt: skip
        print("| student | input, batch | student ms | view ms | view/student | derive ms | D ms "
              "| D GFLOP/s | student GFLOP/s | D/student throughput |")  # fmt: skip
        print("|---" * 10 + "|")
        for pair in pairs:
            r = extras[pair.key]
            s_ms, v_ms, d_ms = r["student_train" + suffix], r["view_train" + suffix], r["d_train" + suffix]
            s_rate, d_rate = r["student_train_flops"] / s_ms / 1e6, r["d_train_flops"] / d_ms / 1e6
            print(f"| {pair.student} | {size_of(pair)} px, {batch_of(pair)} | {s_ms:.0f} | {v_ms:.0f} "
                  f"| {v_ms / s_ms:.2f} | {r['derive' + suffix]:.1f} | {d_ms:.0f} | {d_rate:.0f} | {s_rate:.0f} "
                  f"| {d_rate / s_rate:.2f} |")  # fmt: skip
        print("\n## Exported student: inference time against the plain model\n")
        print("Eval-mode forward (inference_mode), the exported student (Distiller.export_student) against a "
              "freshly built model of the same architecture with the same weights loaded strictly; the two "
              f"alternate within each of {5 * args.steps} rounds; median"
              + (" wall and CPU time." if cpu else " time.") + "\n")  # fmt: skip
        cpu_head = " | plain CPU ms | exported CPU ms | exported/plain, CPU time" if cpu else ""
        print(f"| student | input, batch | plain model ms | exported student ms | exported/plain{cpu_head} |")
        print("|---" * (5 + 3 * cpu) + "|")
        for pair in pairs:
            r = extras[pair.key]
            cpu_cells = ""
            if cpu:
                cpu_cells = (f" | {r['fresh_infer_cpu']:.1f} | {r['exported_infer_cpu']:.1f} "
                             f"| {r['exported_infer_cpu'] / r['fresh_infer_cpu']:.2f}")  # fmt: skip
            print(f"| {pair.student} | {size_of(pair)} px, {batch_of(pair)} | {r['fresh_infer']:.1f} "
                  f"| {r['exported_infer']:.1f} | {r['exported_infer'] / r['fresh_infer']:.2f}{cpu_cells} |",
                  flush=True)  # fmt: skip

        if branch_pair is not None and (branch_pair.key, "kd+orepa", False) in rows:
            size, batch = size_of(branch_pair), batch_of(branch_pair)
            print('\n## Six-branch blocks (Channel-Branch Reparameterization, branches="orepa"), KD\n')
            print("Steps as in the first table; the no-branch columns are its KD rows. Each branch configuration "
                  "ran right after the matching no-branch one.\n")  # fmt: skip
            cpu_head = " | CPU ms, no branches | CPU ms, branches | CPU-time ratio" if cpu else ""
            print(f"| pair | input, batch | mode | ms, no branches | ms, branches | time ratio{cpu_head} "
                  f"| GFLOP, no branches | GFLOP, branches | FLOP ratio | {memory}, no branches | {memory}, branches |")  # fmt: skip
            print("|---" * (11 + 3 * cpu) + "|")
            for gpd_on in (False, True):
                plain, branched = rows[branch_pair.key, "kd", gpd_on], rows[branch_pair.key, "kd+orepa", gpd_on]
                cpu_cells = ""
                if cpu:
                    cpu_cells = (f" | {plain['cpu_ms']:.0f} | {branched['cpu_ms']:.0f} "
                                 f"| {branched['cpu_ms'] / plain['cpu_ms']:.2f}")  # fmt: skip
                print(f"| {branch_pair.teacher} -> {branch_pair.student} | {size} px, {batch} "
                      f"| {'KD + GPD' if gpd_on else 'KD alone'} | {plain['step_ms']:.0f} | {branched['step_ms']:.0f} "
                      f"| {branched['step_ms'] / plain['step_ms']:.2f}{cpu_cells} | {_gflop(plain['flops'])} "
                      f"| {_gflop(branched['flops'])} | {branched['flops'] / plain['flops']:.2f} "
                      f"| {plain['peak_mb']:.0f} | {branched['peak_mb']:.0f} |", flush=True)  # fmt: skip
    print(f"\nTotal wall time {time.time() - started:.0f} s; load average at end {_load()}.")


def hf_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """--hf: the student view of transformers models against the plain model (benchmarks/speed_hf.py)."""
    from speed_hf import HF_MODELS, hf_table

    keys = [key.strip() for key in args.hf_models.split(",") if key.strip()]
    unknown = [key for key in keys if key not in HF_MODELS]
    if unknown or not keys:
        parser.error(f"--hf-models takes a comma-separated subset of {', '.join(HF_MODELS)}, got {args.hf_models!r}")
    try:
        import transformers
    except ImportError:
        raise SystemExit("--hf needs transformers: pip install 'gpd[hf]'") from None
    import torch

    args.batch = args.batch or (2 if args.quick else 16)
    args.steps = args.steps or (2 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    started = time.time()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else _cpu_model()
    print(f"# The student view of transformers models, r = 2 ({time.strftime('%Y-%m-%d %H:%M')})\n")
    print(f"device {args.device} ({device_name}); torch {torch.__version__}; transformers {transformers.__version__}; "
          f"precision {args.precision}; threads {args.threads}; load average at start {_load()}\n")  # fmt: skip
    print(f"command: {' '.join(['python', os.path.relpath(__file__), *sys.argv[1:]])}\n")
    hf_table(keys, args, _run_worker)
    print(f"\nTotal wall time {time.time() - started:.0f} s; load average at end {_load()}.")


BRANCH_CASES = "resnet:112:16,resnet:112:64,resnet:224:16,cifar:32:32"


def _paths_text(paths: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{role}: " + ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
                     for role, counts in paths.items())  # fmt: skip


def branch_cost_table(args: argparse.Namespace, cases: str) -> None:
    """DKD + GPD steps with and without six-branch blocks, alternating in time, one process each."""
    parsed = []
    for case in cases.split(","):
        try:
            key, size, batch = case.strip().split(":")
            parsed.append((PAIR_BY_KEY[key], int(size), int(batch)))
        except (ValueError, KeyError):
            raise SystemExit(
                f"--cases takes PAIR:SIZE:BATCH with PAIR in {', '.join(PAIR_BY_KEY)}, got {case!r}"
            ) from None
    started = time.time()
    cpu = args.device == "cpu"
    print(
        f"# Six-branch blocks: DKD + GPD (r = 2) step with and without branches ({time.strftime('%Y-%m-%d %H:%M')})\n"
    )
    print(f"device {args.device} ({_cpu_model() if cpu else ''}); precision {args.precision}; threads {args.threads}; "
          f"{args.warmup} warm-up + {args.steps} timed steps, median; rounds {args.rounds} (the two configurations "
          f"of a case alternate); load average at start {_load()}\n")  # fmt: skip
    print(f"command: {' '.join(['python', os.path.relpath(__file__), *sys.argv[1:]])}\n")
    memory = "peak CUDA MB" if not cpu else "step-added peak RSS MB"
    time_key = "cpu_ms" if cpu else "step_ms"
    print(f"| pair | input, batch | {'CPU ' if cpu else ''}ms, no branches | {'CPU ' if cpu else ''}ms, branches "
          f"| time ratio | of which optimizer ms, no branches / branches | GFLOP, no branches | GFLOP, branches "
          f"| FLOP ratio | least FLOP ratio | {memory}, no branches | {memory}, branches | memory ratio "
          f"| trainable params, no branches / branches | path per block |")  # fmt: skip
    print("|---" * 15 + "|")
    for pair, size, batch in parsed:
        runs: dict[str, list[dict]] = {"none": [], "orepa": []}
        for _ in range(args.rounds):
            for branches in ("none", "orepa"):
                spec = dict(kind="step", pair=pair.key, method="dkd", gpd_on=True, branches=branches, size=size,
                            batch=batch, steps=args.steps, warmup=args.warmup)  # fmt: skip
                runs[branches].append(_run_worker(spec, args))
        plain = dict(min(runs["none"], key=lambda r: r[time_key]), peak_mb=min(r["peak_mb"] for r in runs["none"]))
        branched = dict(min(runs["orepa"], key=lambda r: r[time_key]), peak_mb=min(r["peak_mb"] for r in runs["orepa"]))
        least = (plain["flops"] + branched["least_branch_flops"]) / plain["flops"]
        print(f"| {pair.teacher} -> {pair.student} | {size} px, {batch} | {plain[time_key]:.0f} | {branched[time_key]:.0f} "
              f"| {branched[time_key] / plain[time_key]:.2f} | {plain['optimizer_ms']:.0f} / {branched['optimizer_ms']:.0f} "
              f"| {_gflop(plain['flops'])} | {_gflop(branched['flops'])} | {branched['flops'] / plain['flops']:.2f} "
              f"| {least:.2f} | {plain['peak_mb']:.0f} | {branched['peak_mb']:.0f} "
              f"| {branched['peak_mb'] / plain['peak_mb']:.2f} | {plain['params'] / 1e6:.1f} M / "
              f"{branched['params'] / 1e6:.1f} M | {_paths_text(branched['paths'])} |", flush=True)  # fmt: skip
    print(f"\nTotal wall time {time.time() - started:.0f} s; load average at end {_load()}.")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or 'cpu'}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
