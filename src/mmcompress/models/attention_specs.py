"""Where known attention classes keep their heads (data only; used by structured head pruning).

Hugging Face attention modules (transformers >= 5) reshape with `view(..., -1, head_dim)`, so
pruning heads means slicing q/k/v rows and output-projection columns and updating head counts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionSpec:
    """Where an attention class keeps its head projections, so heads can be pruned by name.

    Attributes:
        class_name: the attention module's class name (e.g. "CLIPAttention").
        q, k, v, o: dotted paths, relative to the attention module, of the query/key/value
            projections (head-major outputs) and the output projection (head-major inputs).
        head_dim: attribute path holding the size of one head ("": q's outputs / the first head count).
        head_counts: attribute paths set to the new number of heads after pruning.
        widths: attribute paths set to heads * head_dim after pruning.
        kv_groups: attribute path of the query heads per key/value head (grouped-query attention);
            heads are pruned only when it is 1.

    Example:
        >>> spec = AttentionSpec("MyAttention", "q", "k", "v", "o", "head_dim", ("heads",))
    """

    class_name: str
    q: str
    k: str
    v: str
    o: str
    head_dim: str
    head_counts: tuple[str, ...] = ()
    widths: tuple[str, ...] = ()
    kv_groups: str | None = None


_PROJ = ("q_proj", "k_proj", "v_proj")

BUILTIN_ATTENTION: tuple[AttentionSpec, ...] = (
    # ours (models/layers.py): head size = q.out_features / heads
    AttentionSpec("Attention", "q", "k", "v", "o", head_dim="", head_counts=("heads",)),
    # BERT family (also MiniLM / sentence-transformers)
    AttentionSpec(
        "BertAttention", "self.query", "self.key", "self.value", "output.dense",
        head_dim="self.attention_head_size", head_counts=("self.num_attention_heads",), widths=("self.all_head_size",),
    ),
    # nn.MultiheadAttention once split (models/split_attention.py); embed_dim stays the output width
    AttentionSpec("SplitMultiheadAttention", *_PROJ, "out_proj", head_dim="head_dim", head_counts=("num_heads",)),
    AttentionSpec("CLIPAttention", *_PROJ, "out_proj", head_dim="head_dim", head_counts=("num_heads",)),
    AttentionSpec("SiglipAttention", *_PROJ, "out_proj", head_dim="head_dim", head_counts=("num_heads",)),
    AttentionSpec("WhisperAttention", *_PROJ, "out_proj", head_dim="head_dim", head_counts=("num_heads",)),
    AttentionSpec("Wav2Vec2Attention", *_PROJ, "out_proj", head_dim="head_dim", head_counts=("num_heads",)),
    AttentionSpec("ViTAttention", *_PROJ, "o_proj", head_dim="head_dim", head_counts=("num_attention_heads",)),
    AttentionSpec("LlamaAttention", *_PROJ, "o_proj", head_dim="head_dim", kv_groups="num_key_value_groups"),
)  # fmt: skip
