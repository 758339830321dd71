"""The batch convention's errors: a DataLoader's (inputs, labels) pair passed where inputs go."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmcompress.core.batches import call_model
from mmcompress.errors import DataError


def test_an_inputs_labels_pair_is_named_as_such():
    with pytest.raises(DataError, match=r"not \(inputs, labels\) pairs"):
        call_model(nn.Linear(2, 2), (torch.zeros(1, 2), torch.zeros(1)))
    assert call_model(nn.Bilinear(2, 2, 1), (torch.zeros(1, 2), torch.zeros(1, 2))).shape == (1, 1)


class _TextModel(nn.Module):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (input_ids * attention_mask).float()


class _Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(x, 0)  # a TypeError of the model's own, inside forward


def test_a_batch_that_does_not_fit_the_signature_is_a_data_error_naming_both():
    """A tensor batch for a model that wants ids and a mask (a new user's `quantize minilm --data
    fashion-captions` ended in a raw TypeError traceback)."""
    with pytest.raises(DataError, match=r"one tensor \(4, 1, 28, 28\).*attention_mask.*inputs do not fit"):
        call_model(_TextModel(), torch.zeros(4, 1, 28, 28))
    with pytest.raises(DataError, match=r"keys input_ids, pixel_values\): missing a required argument"):
        call_model(_TextModel(), {"input_ids": torch.ones(1, 3), "pixel_values": torch.ones(1, 3)})
    ids = torch.ones(2, 3, dtype=torch.long)
    assert call_model(_TextModel(), {"input_ids": ids, "attention_mask": ids}).shape == (2, 3)
    with pytest.raises(TypeError, match="expected a tuple|must be tuple|tensors"):  # the model's own error stays
        call_model(_Broken(), torch.zeros(2))
