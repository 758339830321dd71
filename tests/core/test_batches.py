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
