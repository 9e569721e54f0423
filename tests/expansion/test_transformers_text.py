"""The transformers text architectures expand exactly at r = 2 (issue #24), or are refused by name.

Every model is sharpened (weights of unit scale, float64): at transformers' initial std 0.02
attention is nearly uniform and a wrong head layout hides below the tolerance (ModernBERT's
fused ``Wqkv`` read as ``[q k v q k v]`` passed with a 7e-5 difference before it had a rule).
"""

from __future__ import annotations

import copy

import pytest
import torch

import gpd
from gpd.inputs import call_model
from gpd.outputs import logits_of
from helpers import TEXT_MODELS, rel_err, text_batch, text_model

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("torch_single_thread")

DECODERS = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma"]


def logits(model: object, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return logits_of(call_model(model, batch))  # type: ignore[arg-type]


@pytest.mark.filterwarnings("error:layers never called")  # DeBERTa's relative embeddings are read, not called
@pytest.mark.parametrize("name", list(TEXT_MODELS))
def test_text_model_expands_exactly_and_exports_strictly(name: str) -> None:
    student, batch = text_model(name), text_batch(name)
    expected = logits(student, batch)
    model = gpd.expand(student, 2, example_input=batch).eval()
    assert model.report.layout == "tiled"
    assert rel_err(logits(model.forward_dynamic, batch), expected) <= 1e-12
    assert rel_err(logits(model.forward_student, batch), expected) <= 1e-12
    exported = model.export_student()
    fresh = copy.deepcopy(student)
    fresh.load_state_dict(exported.state_dict(), strict=True)
    assert rel_err(logits(fresh, batch), expected) <= 1e-12


@pytest.mark.parametrize("name", ["deberta_v2", "modernbert", "gpt2", *DECODERS])
def test_text_attention_rules_are_exact_in_the_interleaved_layout(name: str) -> None:
    """Each copy of a head must be one whole head in both layouts (RMSNorm computes in float32)."""
    student, batch = text_model(name), text_batch(name)
    model = gpd.expand(student, 2, example_input=batch, layout="interleaved").eval()
    assert rel_err(logits(model.forward_dynamic, batch), logits(student, batch)) <= 1e-6


def test_grouped_query_attention_doubles_query_and_key_value_heads() -> None:
    student = text_model("llama")
    model = gpd.expand(student, 2, example_input=text_batch("llama"))
    attention = model.dynamic.model.layers[0].self_attn
    assert attention.q_proj.out_features == 64 and attention.k_proj.out_features == 32  # 8 and 4 heads of 8
    assert attention.num_key_value_groups == student.model.layers[0].self_attn.num_key_value_groups
    assert model.dynamic.model.rotary_emb.inv_freq.shape == student.model.rotary_emb.inv_freq.shape  # head size kept


def test_phi3_fused_projections_and_config_counts() -> None:
    student = text_model("phi3")
    model = gpd.expand(student, 2, example_input=text_batch("phi3"))
    layer = model.dynamic.model.layers[0]
    assert layer.self_attn.qkv_proj.out_features == 2 * (32 + 2 * 16)
    assert layer.self_attn.config.num_attention_heads == 8 and layer.self_attn.num_key_value_heads == 4
    assert student.config.num_attention_heads == 4 and student.model.layers[0].self_attn.num_key_value_heads == 2
    assert layer.mlp.gate_up_proj.out_features == 4 * 37


def test_qwen3_head_norms_stay_at_the_head_size() -> None:
    student = text_model("qwen3")
    model = gpd.expand(student, 2, example_input=text_batch("qwen3"))
    attention = model.dynamic.model.layers[0].self_attn
    assert attention.q_norm.weight.shape == (8,) and attention.k_norm.weight.shape == (8,)
    assert torch.equal(attention.q_norm.weight, student.model.layers[0].self_attn.q_norm.weight.float())


def test_qwen3_with_one_head_keeps_its_head_norm() -> None:
    """One query and one key/value head: the head size is the whole query segment, still kept."""
    student = text_model("qwen3", num_attention_heads=1, num_key_value_heads=1, head_dim=32)
    batch = text_batch("qwen3")
    model = gpd.expand(student, 2, example_input=batch).eval()
    assert model.dynamic.model.layers[0].self_attn.q_norm.weight.shape == (32,)
    assert rel_err(logits(model.forward_dynamic, batch), logits(student, batch)) <= 1e-12


def test_gemma_norm_adds_one_to_its_tiled_weight() -> None:
    student = text_model("gemma")
    model = gpd.expand(student, 2, example_input=text_batch("gemma"))
    norm, student_norm = model.dynamic.model.norm, student.model.norm
    assert torch.equal(norm.weight, student_norm.weight.float().repeat(2))
    x = torch.randn(2, 3, 32, dtype=torch.float64)
    assert rel_err(norm.double()(x.repeat(1, 1, 2))[..., :32], student_norm(x)) <= 1e-12


def test_gpt2_conv1d_is_transposed() -> None:
    student = text_model("gpt2")
    model = gpd.expand(student, 2, example_input=text_batch("gpt2"))
    mlp = model.dynamic.transformer.h[0].mlp
    assert mlp.c_fc.weight.shape == (64, 74) and (mlp.c_fc.nx, mlp.c_fc.nf) == (64, 74)
    assert model.dynamic.transformer.h[0].attn.split_size == 64


def test_modernbert_was_a_real_difference_not_rounding() -> None:
    """The old 7.3e-5 was the same in float64: Wqkv read as [q k v q k v]. Tiled now, and exact."""
    student, batch = text_model("modernbert"), text_batch("modernbert")
    model = gpd.expand(student, 2, example_input=batch)
    assert model.report.layout == "tiled" and model.report.dynamic_error <= 1e-12


def test_albert_shared_layers_stay_shared_in_d_and_the_export() -> None:
    student, batch = text_model("albert"), text_batch("albert")
    model = gpd.expand(student, 2, example_input=batch).eval()
    count = sum(p.numel() for p in student.parameters())
    assert len(list(model.dynamic.parameters())) == len(list(student.parameters()))
    exported = model.export_student()
    assert sum(p.numel() for p in exported.parameters()) == count
    assert rel_err(logits(exported, batch), logits(student, batch)) <= 1e-12


def test_a_position_count_equal_to_a_channel_count_is_resolved() -> None:
    """64 positions and an MLP of 64 channels (BERT's 512/512 in small): the embedding's rule knows its axis."""
    student = text_model("bert", intermediate_size=64, max_position_embeddings=64)
    batch = text_batch("bert")
    model = gpd.expand(student, 2, example_input=batch).eval()
    assert model.dynamic.bert.embeddings.position_embeddings.weight.shape == (64, 64)
    assert rel_err(logits(model.forward_dynamic, batch), logits(student, batch)) <= 1e-12


def test_tied_input_and_output_embeddings_are_refused_by_name() -> None:
    config = transformers.LlamaConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=37, tie_word_embeddings=True,
    )  # fmt: skip
    student = transformers.LlamaForCausalLM(config).eval()
    batch = {"input_ids": torch.randint(1, 50, (2, 6))}
    with pytest.raises(gpd.ExpansionError, match=r"model\.embed_tokens\.weight' is tied to 'lm_head\.weight'.*untie"):
        gpd.expand(student, 2, example_input=batch)
    student.lm_head.weight = torch.nn.Parameter(student.model.embed_tokens.weight.detach().clone())
    model = gpd.expand(student, 2, example_input=batch)
    assert model.report.dynamic_error <= 1e-4
