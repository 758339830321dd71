"""Where known model-library blocks keep their feed-forward layers (data only; used by structured
channel pruning, which cannot trace inside those blocks).

In each listed class the forward computes `down(act(up(x)))` (or `down(act(gate(x)) * up(x))`)
and reads the hidden units nowhere else, so removing hidden units means slicing the rows of the
`up` layers and the columns of `down`: one channel group whose consumer is `down`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeedForwardSpec:
    """The feed-forward layers of a block class, by dotted path relative to the block.

    Attributes:
        class_name: the block's class name (e.g. "CLIPMLP").
        up: the Linear layers whose outputs are the hidden units (several: gated, e.g. LLaMA).
        down: the Linear layer that reads the hidden units.

    Example:
        >>> FeedForwardSpec("MyMLP", ("fc1",), "fc2").down
        'fc2'
    """

    class_name: str
    up: tuple[str, ...]
    down: str


BUILTIN_FEED_FORWARD: tuple[FeedForwardSpec, ...] = (
    FeedForwardSpec("BertLayer", ("intermediate.dense",), "output.dense"),  # BERT family, MiniLM
    FeedForwardSpec("RobertaLayer", ("intermediate.dense",), "output.dense"),
    FeedForwardSpec("ViTMLP", ("fc1",), "fc2"),
    FeedForwardSpec("CLIPMLP", ("fc1",), "fc2"),
    FeedForwardSpec("SiglipMLP", ("fc1",), "fc2"),
    FeedForwardSpec("WhisperEncoderLayer", ("fc1",), "fc2"),
    FeedForwardSpec("WhisperDecoderLayer", ("fc1",), "fc2"),
    FeedForwardSpec("Wav2Vec2FeedForward", ("intermediate_dense",), "output_dense"),
    FeedForwardSpec("LlamaMLP", ("gate_proj", "up_proj"), "down_proj"),
)
SPECS_BY_CLASS = {spec.class_name: spec for spec in BUILTIN_FEED_FORWARD}
