"""Expansion of transformers' vision models: their per-head tables and head counts.

transformers' attention layers keep separate q/k/v Linears and reshape with the head size
(``view(..., -1, head_dim)``), so the torch rules expand most of them: D's head ``j``
copies the student's head ``j mod H`` in the tiled layout (docs/method.md). What they
cannot see is declared here with :func:`gpd.expansion.head_tables.register_head_tensors`:

* BEiT (and Data2Vec-vision) and Swin: a relative position bias table of shape
  ``(offsets, heads)`` in a module of its own, tiled on its head axis;
* Swinv2: the per-head logit scale ``(heads, 1, 1)``, the continuous position bias MLP whose
  last Linear writes one value per head, and the head counts its forward reshapes with;
* LeViT: attention biases ``(heads, offsets)``, their cache, and its head counts
  (its fused ``queries_keys_values`` is laid out head by head, so a plain tile copies heads);
* MobileViT: the head counts its forward reshapes with.

Registered when transformers is imported (:func:`gpd.expansion.rules.register_when_imported`);
``import gpd`` never imports transformers.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from gpd.expansion.head_tables import register_head_tensors

TABLE = {"relative_position_bias_table": 1}  # (offsets, heads)
LEVIT_COUNTS = ("num_attention_heads", "out_dim_keys_values", "out_dim_projection")
HEAD_AND_CHANNEL_COUNTS = ("num_attention_heads", "all_head_size")

# module of transformers.models -> class -> (per-head tensors, per-head MLPs, head counts, caches)
DECLARED: dict[str, dict[str, tuple[Mapping[str, int], tuple[str, ...], tuple[str, ...], tuple[str, ...]]]] = {
    "beit.modeling_beit": {"BeitRelativePositionBias": (TABLE, (), (), ())},
    "data2vec.modeling_data2vec_vision": {"Data2VecVisionRelativePositionBias": (TABLE, (), (), ())},
    "swin.modeling_swin": {"SwinRelativePositionBias": (TABLE, (), (), ())},
    "swinv2.modeling_swinv2": {
        "Swinv2SelfAttention": ({"logit_scale": 0}, ("continuous_position_bias_mlp",), HEAD_AND_CHANNEL_COUNTS, ())
    },
    "levit.modeling_levit": {
        "LevitAttention": ({"attention_biases": 0}, (), LEVIT_COUNTS, ("attention_bias_cache",)),
        "LevitAttentionSubsample": ({"attention_biases": 0}, (), LEVIT_COUNTS, ("attention_bias_cache",)),
    },
    "mobilevit.modeling_mobilevit": {"MobileViTSelfAttention": ({}, (), HEAD_AND_CHANNEL_COUNTS, ())},
}


def register_transformers_vision_rules() -> None:
    """Declare the per-head tensors and head counts of transformers' vision models (those installed)."""
    for module_name, classes in DECLARED.items():
        try:
            module = importlib.import_module(f"transformers.models.{module_name}")
        except ImportError:  # an older or newer transformers without this model
            continue
        for class_name, (axes, head_mlps, head_counts, caches) in classes.items():
            module_class = getattr(module, class_name, None)
            if isinstance(module_class, type):
                register_head_tensors(module_class, axes, head_mlps=head_mlps, head_counts=head_counts, caches=caches)
