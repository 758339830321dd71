"""Calibration statistics leave padded positions out."""

import torch
from torch import nn

from mmcompress.core.walker import padding_masks, run_calibration, without_padding


class _TokenModel(nn.Module):
    """Embeds token ids and projects them; padded ids carry a huge value that must not be seen."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 3)

    def forward(self, input_ids, attention_mask):
        return self.proj(self.embed(input_ids))


def test_linear_inputs_at_padded_positions_are_not_collected():
    model = _TokenModel()
    with torch.no_grad():
        model.embed.weight[0] = 1e6  # the padding id
    ids = torch.tensor([[3, 4, 5, 0], [6, 0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    seen = []
    run_calibration(model, {"proj": model.proj}, [batch], lambda n, m, x: seen.append(x))
    assert seen[0].shape == (4, 4)  # 4 real tokens, rows of features
    assert seen[0].abs().max() < 1e3


def test_two_different_masks_of_one_shape_are_ambiguous_and_unused():
    batch = {"attention_mask": torch.tensor([[1, 0]]), "decoder_attention_mask": torch.tensor([[1, 1]])}
    assert set(padding_masks(batch)) == {(1, 2)}  # the decoder's mask pads nothing: the other one is used
    batch["decoder_attention_mask"] = torch.tensor([[0, 1]])
    assert padding_masks(batch) == {}
    x = torch.randn(1, 2, 5)
    assert without_padding(x, padding_masks(batch)) is x
