"""A small digits CNN trained the same way by the recipe tests (only the epochs differ)."""

import pytest
import torch

from mmcompress.models.zoo import ImageClassifier
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit
from mmcompress.train.tasks import ClassificationTask


@pytest.fixture
def train_digits_cnn(digits):
    """`train_digits_cnn(epochs)`: ImageClassifier((8, 16, 32)) fit on digits, seed 0."""

    def train(epochs: int) -> ImageClassifier:
        torch.manual_seed(0)
        model = ImageClassifier((8, 16, 32))
        fit(model, ClassificationTask(), digits[0], TrainConfig(epochs=epochs, batch_size=64, lr=5e-3), progress=False)
        return model

    return train
