"""The student view of Hugging Face transformers models against the plain model (``speed.py --hf``).

Issue 24's speed target: the student's forward + backward through ``GPDModel.forward_student``
(its parameters read out of D's tensors on every call, gpd.sharing) costs at most 1.10 times
the same forward + backward of the plain, unexpanded transformers model, on a small BERT and a
small ViT. Both models are built from random configs offline and expanded at r = 2; the loss
is cross-entropy on the logits (``gpd.outputs.logits_of``), the input goes through
``gpd.inputs.call_model`` (a mapping as keyword arguments for BERT). The two cases alternate
within every round (A, B, then B, A), so noise on a shared machine hits both alike; medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HF_TARGET = 1.10  # the student view's forward + backward over the plain model's (issue 24)


@dataclass(frozen=True)
class HFModel:
    key: str
    label: str  # the class and the sizes, for the table
    build: Callable[[int, int], tuple[Any, Any, Any]]  # (batch, seq) -> (model, input, labels)


def _bert(batch: int, seq: int) -> tuple[Any, Any, Any]:
    """BERT-mini's shape (google's L-4 H-256 A-4, full WordPiece vocabulary); a third of the rows padded."""
    import torch
    import transformers

    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
        max_position_embeddings=512, type_vocab_size=2, num_labels=2,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, config.vocab_size, (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row in range(1, batch, 3):  # padded rows: the mask is part of the measured work
        ids[row, seq * 3 // 4 :] = 0
        mask[row, seq * 3 // 4 :] = 0
    labels = torch.randint(0, config.num_labels, (batch,), generator=generator)
    return model, {"input_ids": ids, "attention_mask": mask}, labels


def _vit(batch: int, seq: int) -> tuple[Any, Any, Any]:
    """DeiT-tiny's shape (224 px, 16 px patches, hidden 192, 3 heads) with 6 layers; ``seq`` is unused."""
    import torch
    import transformers

    config = transformers.ViTConfig(
        image_size=224, patch_size=16, num_channels=3, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
        intermediate_size=768, num_labels=10,
    )  # fmt: skip
    model = transformers.ViTForImageClassification(config)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 224, 224, generator=generator)
    return model, images, torch.randint(0, config.num_labels, (batch,), generator=generator)


HF_MODELS = {
    "bert": HFModel("bert", "BertForSequenceClassification: hidden 256, 4 layers, 4 heads, intermediate 1024, "
                    "vocabulary 30522", _bert),
    "vit": HFModel("vit", "ViTForImageClassification: 224 px, patch 16, hidden 192, 6 layers, 3 heads, "
                   "intermediate 768", _vit),
}  # fmt: skip


def _example(x: Any) -> Any:
    """The first rows of the batch (a padded row included) as the expansion's example input."""
    import torch

    if isinstance(x, torch.Tensor):
        return x[:2]
    return {key: value[:4] for key, value in x.items()}


def hf_worker(model: str, batch: int, seq: int, steps: int, warmup: int, keep_memory: bool, env: Any) -> dict:
    """Median forward + backward time of the plain model and of the student view, alternating.

    ``keep_memory``: on the CPU, time under :func:`gpd.training.host_memory.keep_host_memory`
    (what ``gpd train`` does there), so that freed gradients are reused without page faults.
    """
    from gpd.training.host_memory import keep_host_memory

    with keep_host_memory(keep_memory and env.device == "cpu") as host_memory:
        return {**_measure(model, batch, seq, steps, warmup, env), "host_memory": host_memory}


def _measure(model: str, batch: int, seq: int, steps: int, warmup: int, env: Any) -> dict:
    import torch
    import torch.nn.functional as F

    import gpd
    from gpd.inputs import call_model, to_device
    from gpd.outputs import logits_of

    torch.manual_seed(0)
    plain, x, y = HF_MODELS[model].build(batch, seq)
    expanded = gpd.expand(plain, ratio=2, example_input=_example(x))
    plain, expanded = plain.to(env.device), expanded.to(env.device)
    x, y = to_device(x, env.device), y.to(env.device)

    plain.eval(), expanded.eval()  # the view's logits equal the plain model's (no dropout in eval)
    with torch.no_grad():
        reference = logits_of(call_model(plain, x))
        through_view = logits_of(call_model(expanded.forward_student, x))
    identical = bool(torch.equal(reference, through_view))
    difference = float((reference - through_view).abs().max())
    plain.train(), expanded.train()

    grads = [*plain.parameters(), *expanded.parameters()]

    def train(forward: Callable[..., Any]) -> Callable[[], None]:
        def run() -> None:
            for p in grads:
                p.grad = None
            with env.autocast():
                loss = F.cross_entropy(logits_of(call_model(forward, x)), y)
            loss.backward()

        return run

    def derive() -> None:
        with env.autocast():
            expanded.student_parameters()

    cases = {"plain": train(plain), "view": train(expanded.forward_student), "derive": derive}
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for index in range(steps):
        order = list(cases) if index % 2 == 0 else ["view", "plain", "derive"]  # A, B then B, A
        for name in order:
            env.sync()
            started, cpu_started = time.perf_counter(), time.process_time()
            cases[name]()
            env.sync()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - cpu_started)
    paired = [view / base for view, base in zip(wall["view"], wall["plain"])]
    result: dict[str, Any] = {name: 1000 * statistics.median(values) for name, values in wall.items()}
    result.update({f"{name}_cpu": 1000 * statistics.median(values) for name, values in cpu.items()})
    result.update(
        paired_ratio=statistics.median(paired),
        identical=identical,
        max_difference=difference,
        student_params=sum(p.numel() for p in plain.parameters()),
        dynamic_params=sum(p.numel() for p in expanded.parameters()),
        attention=str(getattr(plain.config, "_attn_implementation", "?")),
    )
    return result


def input_text(key: str, batch: int, seq: int) -> str:
    return f"{seq} tokens, {batch}" if key == "bert" else f"224 px, {batch}"


def hf_table(keys: list[str], args: Any, run_worker: Callable[[dict, Any], dict]) -> bool:
    """Print the table (each model in its own worker process); True when every ratio meets the target."""
    cpu = args.device == "cpu"
    print("## Student view of transformers models: forward + backward against the plain model\n")
    print("plain: the unexpanded transformers model; view: the same student through GPDModel.forward_student "
          "(r = 2; its parameters read out of D's tensors on every call). Forward (gpd.inputs.call_model), "
          "cross-entropy on the logits, backward; no optimizer; train mode (dropout on). The two alternate "
          f"within each of {args.steps} rounds (A, B then B, A) after {args.warmup} warm-up calls each; "
          "medians. paired: the median of the per-round wall-time ratios. derive: reading the student's "
          "parameters out of D, forward only. eval logits: the view's eval-mode logits against the plain "
          f"model's, bit for bit. Target: view/plain at most {HF_TARGET:.2f}."
          + (" Host memory: kept for reuse (gpd.training.host_memory, as gpd train does on the CPU)."
             if cpu and args.keep_host_memory else " Host memory: glibc's defaults (large blocks mmap'd afresh)."
             if cpu else "") + "\n")  # fmt: skip
    cpu_head = " | plain CPU ms | view CPU ms | view/plain, CPU time" if cpu else ""
    print(f"| model | input, batch | plain ms | view ms | view/plain | paired{cpu_head} | derive ms "
          "| params, student / D | attention | eval logits |")  # fmt: skip
    print("|---" * (10 + 3 * cpu) + "|")
    verdicts = []
    for key in keys:
        spec = dict(kind="hf", model=key, batch=args.batch, seq=args.seq, steps=args.steps, warmup=args.warmup,
                    keep_memory=args.keep_host_memory)  # fmt: skip
        r = run_worker(spec, args)
        ratio = r["view"] / r["plain"]
        cpu_cells = ""
        if cpu:
            judged = r["view_cpu"] / r["plain_cpu"]  # one thread: CPU time is not inflated by other load
            cpu_cells = f" | {r['plain_cpu']:.0f} | {r['view_cpu']:.0f} | {judged:.3f}"
        else:
            judged = ratio
        verdicts.append((key, judged))
        logits = "identical" if r["identical"] else f"differ (max {r['max_difference']:.1e})"
        print(f"| {HF_MODELS[key].label} | {input_text(key, args.batch, args.seq)} | {r['plain']:.0f} "
              f"| {r['view']:.0f} | {ratio:.3f} | {r['paired_ratio']:.3f}{cpu_cells} | {r['derive']:.1f} "
              f"| {r['student_params'] / 1e6:.2f} M / {r['dynamic_params'] / 1e6:.2f} M | {r['attention']} "
              f"| {logits} |", flush=True)  # fmt: skip
    met = all(value <= HF_TARGET for _, value in verdicts)
    measure = "CPU-time" if cpu else "wall-time"
    cells = ", ".join(f"{key} {value:.3f}" for key, value in verdicts)
    print(f"\nTarget: the {measure} ratio view/plain at most {HF_TARGET:.2f}: {cells}: {'met' if met else 'NOT met'}.")
    return met
