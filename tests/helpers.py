"""Helpers shared by the tests: numerical comparisons, bundled models, the CLI's paths."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gpd.data import locate
from gpd.models import create_model, list_models
from gpd.testing import calibrate_batchnorm, randomize_batchnorm, unit_scale_weights  # also re-exported


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (computed in float64; b is the reference)."""
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def assert_nontrivial(output: torch.Tensor) -> None:
    """The outputs of different samples differ: the model does not output a constant."""
    out = output.detach().double()
    spread = (out - out.mean(0, keepdim=True)).abs().max().item()
    assert spread > 1e-3 * out.abs().max().item(), "model output does not depend on the input"


def bundled_model_names() -> list[str]:
    """Every model of gpd's zoo (``gpd.models.list_models()``), sorted."""
    names = sorted(list_models())
    assert names, "gpd.models.list_models() is empty"
    return names


def create_bundled(name: str, in_chans: int = 3, num_classes: int = 10) -> nn.Module:
    """A bundled model for 28-32 px inputs (MobileNets with a stride-1 stem)."""
    extra = {"small_input": True} if "mobilenet" in name else {}
    return create_model(name, num_classes=num_classes, in_chans=in_chans, **extra)


def batchnorms(model: nn.Module) -> dict[str, _BatchNorm]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


needs_fashion_mnist = pytest.mark.skipif(
    not (locate.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed (make test installs it)",
)
GPD = str(Path(sys.executable).with_name("gpd"))  # the CLI of this environment
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

FASHION_MNIST_PRESENT = (locate.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_PRESENT, reason="Fashion-MNIST is not installed (make test installs it)"
)
QUICK = ["data.train_subset=2048", "train.epochs=1", "train.batch_size=32", "train.eval_batch_size=1000"]  # a quick run


HEAD_TABLE_NAMES = ("relative_position_bias_table", "attention_biases", "logit_scale", "continuous_position_bias_mlp")


def hf_vision_model(name: str, labels: int = 3) -> tuple[nn.Module, int]:
    """A tiny transformers vision classifier with per-head tables or head counts, and its image size.

    Its parameters are perturbed, its per-head tables most (they start at zero, where a wrong
    layout would hide); its BatchNorms get random weights and calibrated statistics. In eval mode.
    """
    import transformers

    vit = dict(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=labels,
    )
    swin = dict(
        image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=labels
    )
    configs = {
        "beit": (transformers.BeitConfig(use_relative_position_bias=True, layer_scale_init_value=0.5, **vit), 16),
        "beit_shared": (transformers.BeitConfig(use_shared_relative_position_bias=True, **vit), 16),
        "swin": (transformers.SwinConfig(**swin), 32),
        "swinv2": (transformers.Swinv2Config(**swin), 32),
        "levit": (
            transformers.LevitConfig(
                image_size=32,
                hidden_sizes=[16, 24, 32],
                num_attention_heads=[1, 2, 2],
                depths=[1, 1, 1],
                key_dim=[8, 8, 8],
                num_labels=labels,
            ),
            32,
        ),
        "mobilevit": (
            transformers.MobileViTConfig(
                image_size=32,
                hidden_sizes=[16, 24, 32],
                num_labels=labels,
                neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
                num_attention_heads=2,
            ),
            32,
        ),
        "efficientnet": (
            transformers.EfficientNetConfig(
                image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128, num_labels=labels
            ),
            32,
        ),
    }
    config, size = configs[name]
    model = getattr(transformers, f"{type(config).__name__[: -len('Config')]}ForImageClassification")(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            scale = 0.5 if any(part in param_name for part in HEAD_TABLE_NAMES) else 0.02
            param.add_(torch.randn(param.shape, generator=generator) * scale)
        randomize_batchnorm(model, generator)  # transformers draws BatchNorm weights near 0: U(0.5, 1.5)
        calibrate_batchnorm(model, torch.randn(16, 3, size, size, generator=generator))  # then sensible statistics
    return model.train().eval(), size  # train() drops LeViT's cached attention biases


sharpened = unit_scale_weights  # the name the text tests use


TEXT_VOCAB, TEXT_LENGTH, TEXT_LABELS = 50, 8, 3
TEXT_BASE = {
    "vocab_size": TEXT_VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 37, "max_position_embeddings": 24, "num_labels": TEXT_LABELS, "pad_token_id": 0,
}  # fmt: skip
DEBERTA_RELATIVE = {
    "relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 16,
    "max_relative_positions": -1, "norm_rel_ebd": "layer_norm",
}  # fmt: skip
# name -> (config class, model class, token types?, config overrides): tiny random transformers text models
TEXT_MODELS: dict[str, tuple[str, str, bool, dict]] = {
    "bert": ("BertConfig", "BertForSequenceClassification", True, {}),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification", False, {"max_position_embeddings": 26, "pad_token_id": 1}),
    "distilbert": ("DistilBertConfig", "DistilBertForSequenceClassification", False, {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 37}),
    "albert": ("AlbertConfig", "AlbertForSequenceClassification", True, {"embedding_size": 16}),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification", True, {"embedding_size": 16}),
    "deberta_v2": ("DebertaV2Config", "DebertaV2ForSequenceClassification", True, {**DEBERTA_RELATIVE, "share_att_key": True}),
    "deberta_v2_own_keys": ("DebertaV2Config", "DebertaV2ForSequenceClassification", True, {**DEBERTA_RELATIVE, "share_att_key": False}),
    "deberta_v2_absolute": ("DebertaV2Config", "DebertaV2ForSequenceClassification", True, {}),  # the default config
    "modernbert": ("ModernBertConfig", "ModernBertForSequenceClassification", False, {}),
    "gpt2": ("GPT2Config", "GPT2ForSequenceClassification", False, {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 37, "n_positions": 24}),
    "llama": ("LlamaConfig", "LlamaForSequenceClassification", False, {"num_key_value_heads": 2}),
    "mistral": ("MistralConfig", "MistralForSequenceClassification", False, {"num_key_value_heads": 2}),
    "qwen2": ("Qwen2Config", "Qwen2ForSequenceClassification", False, {"num_key_value_heads": 2}),
    "qwen3": ("Qwen3Config", "Qwen3ForSequenceClassification", False, {"num_key_value_heads": 2, "head_dim": 8}),
    "phi3": ("Phi3Config", "Phi3ForSequenceClassification", False, {"num_key_value_heads": 2}),
    "gemma": ("GemmaConfig", "GemmaForSequenceClassification", False, {"num_key_value_heads": 2, "head_dim": 8}),
}  # fmt: skip


def text_model(name: str, seed: int = 0, **overrides: object) -> nn.Module:
    """A tiny random transformers text classifier of :data:`TEXT_MODELS`, sharpened, float64, eval mode."""
    import transformers

    config_class, model_class, _, config = TEXT_MODELS[name]
    torch.manual_seed(seed)
    built = getattr(transformers, model_class)(
        getattr(transformers, config_class)(**{**TEXT_BASE, **config, **overrides})
    )
    return sharpened(built, seed).double().eval()


def text_batch(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A padded batch of token ids (the second sequence has three padding tokens)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TEXT_VOCAB, (3, TEXT_LENGTH), generator=generator)
    mask = torch.ones(3, TEXT_LENGTH, dtype=torch.long)
    ids[1, 5:], mask[1, 5:] = 0, 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if TEXT_MODELS[name][2]:
        batch["token_type_ids"] = torch.randint(0, 2, (3, TEXT_LENGTH), generator=generator)
    return batch


# The per-layer step factors of docs/method.md ("Per-layer steps"), derived on paper, by kind of tensor.
# Under step_rule="paper": the student's step relative to plain SGD on the unexpanded student (c² with
# c = r where the student reads D's W/r blocks; 1/a² with a = 1/r on stems, embeddings, tokens and
# expanded biases), and D's relative to plain SGD on the plain wide network (1/a²; a = r on the head).
# Under step_rule="plain" every factor is 1.
_STUDENT_STEP = {"stem": 2, "middle": 2, "expanded_bias": 2, "token": 2, "embedding": 2}  # exponents of r
_DYNAMIC_STEP = {"stem": 2, "expanded_bias": 2, "token": 2, "embedding": 2, "head": -2}


def student_factor(kind: str, r: int, rule: str) -> float:
    """The student's step relative to the plain student's, for a tensor of this kind."""
    return 1.0 if rule == "plain" else float(r) ** _STUDENT_STEP.get(kind, 0)


def dynamic_factor(kind: str, r: int, rule: str) -> float:
    """D's step relative to the plain wide network's, for a tensor of this kind."""
    return 1.0 if rule == "plain" else float(r) ** _DYNAMIC_STEP.get(kind, 0)
