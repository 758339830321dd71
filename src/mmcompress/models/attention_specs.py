"""Where known attention classes keep their heads (data only; used by structured head pruning).

Hugging Face attention modules (transformers >= 5) reshape with `view(..., -1, head_dim)`, so
pruning heads means slicing q/k/v rows and output-projection columns and updating head counts.
"""

from __future__ import annotations

from mmcompress.models.adapter import AttentionSpec

_PROJ = ("q_proj", "k_proj", "v_proj")

BUILTIN_ATTENTION: tuple[AttentionSpec, ...] = (
    # ours (models/layers.py): head size = q.out_features / heads
    AttentionSpec("Attention", "q", "k", "v", "o", head_dim="", head_counts=("heads",)),
    # BERT family (also MiniLM / sentence-transformers)
    AttentionSpec(
        "BertAttention", "self.query", "self.key", "self.value", "output.dense",
        head_dim="self.attention_head_size", head_counts=("self.num_attention_heads",), widths=("self.all_head_size",),
    ),
    AttentionSpec("CLIPAttention", *_PROJ, "out_proj", head_dim="head_dim", head_counts=("num_heads",)),
    AttentionSpec("SiglipAttention", *_PROJ, "out_proj", head_dim="head_dim", head_counts=("num_heads",)),
    AttentionSpec("WhisperAttention", *_PROJ, "out_proj", head_dim="head_dim", head_counts=("num_heads",)),
    AttentionSpec("Wav2Vec2Attention", *_PROJ, "out_proj", head_dim="head_dim", head_counts=("num_heads",)),
    AttentionSpec("ViTAttention", *_PROJ, "o_proj", head_dim="head_dim", head_counts=("num_attention_heads",)),
    AttentionSpec("LlamaAttention", *_PROJ, "o_proj", head_dim="head_dim", kv_groups="num_key_value_groups"),
)  # fmt: skip
