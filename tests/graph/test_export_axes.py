"""Sequence axes of exported files: found by running the model, each input with its own length,
and checked in the written file (a length the exporter fixed is fixed again, with a warning)."""

import warnings

import onnx
import pytest
import torch
from torch import nn

from mmcompress.errors import DataError
from mmcompress.graph.export import export_onnx
from mmcompress.graph.runtime import OrtModel


class FeatureSequence(nn.Module):  # (N, L, E) float frames -> class logits
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(frames).mean(1))


class CrossAttention(nn.Module):  # text tokens attend over image tokens of another length
    def __init__(self) -> None:
        super().__init__()
        self.text, self.image = nn.Embedding(50, 16), nn.Embedding(50, 16)
        self.attend = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        q, kv = self.text(text), self.image(image)
        return self.head(self.attend(q, kv, kv, need_weights=False)[0])  # (N, text length, 3)


class FixedPositions(nn.Module):  # PyTorch takes any length; the exporter bakes the example's
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(50, 8), nn.Parameter(torch.randn(16, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = int(tokens.shape[1])  # a Python int: a constant in the traced graph
        return self.head((self.emb(tokens) + self.pos[:length]).mean(1))


def _dims(path, index: int = 0) -> list:
    dims = onnx.load(str(path)).graph.input[index].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def test_float_sequences_export_with_a_dynamic_length_and_a_fixed_width(tmp_path):
    torch.manual_seed(0)
    model = FeatureSequence().eval()
    export_onnx(model, torch.randn(2, 7, 16), tmp_path / "m.onnx")
    assert _dims(tmp_path / "m.onnx") == ["batch", "input_length", 16]  # a Linear reads E: fixed
    x = torch.randn(3, 12, 16)
    session = OrtModel.from_path(tmp_path / "m.onnx")
    (got,) = session.run({"input": x})
    with torch.no_grad():
        assert torch.allclose(torch.as_tensor(got), model(x), atol=1e-5)
    (alone,) = session.run(x)  # one input: the tensor itself, as a CNN user passes an image batch
    assert (alone == got).all()
    with pytest.raises(DataError, match=r"ONNX inputs \['input'\] are missing; the file takes \['input'\]"):
        session.run({"frames": x})


def test_two_token_inputs_of_different_lengths_each_keep_their_own(tmp_path):
    torch.manual_seed(0)
    model = CrossAttention().eval()
    example = {"text": torch.randint(0, 50, (2, 5)), "image": torch.randint(0, 50, (2, 9))}
    export_onnx(model, example, tmp_path / "m.onnx")
    output = onnx.load(str(tmp_path / "m.onnx")).graph.output[0].type.tensor_type.shape.dim
    assert output[1].dim_param == "output_0_axis1"  # follows the text length
    for text_len, image_len in ((4, 12), (7, 7)):
        text, image = torch.randint(0, 50, (3, text_len)), torch.randint(0, 50, (3, image_len))
        (got,) = OrtModel.from_path(tmp_path / "m.onnx").run({"text": text, "image": image})
        with torch.no_grad():
            assert torch.allclose(torch.as_tensor(got), model(text, image), atol=1e-5)
    with pytest.raises(DataError, match="takes 2 inputs"):
        OrtModel.from_path(tmp_path / "m.onnx").run(text)


def test_a_length_the_exporter_fixed_is_fixed_in_the_file_with_a_warning(tmp_path):
    torch.manual_seed(0)
    model = FixedPositions().eval()
    with pytest.warns(UserWarning, match=r"'input' axis 1 \(length 6\): at length 5 ONNX Runtime"):
        result = export_onnx(model, torch.randint(0, 50, (2, 6)), tmp_path / "m.onnx")
    assert result.cosine > 0.9999 and _dims(tmp_path / "m.onnx") == ["batch", 6]
    with pytest.raises(Exception, match="dimensions"):  # a clear shape error, not a wrong answer
        OrtModel.from_path(tmp_path / "m.onnx").run({"input": torch.randint(0, 50, (2, 5))})


def test_images_keep_their_sizes_and_a_model_that_takes_any_length_warns_nothing(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    export_onnx(model, torch.randn(2, 1, 8, 8), tmp_path / "cnn.onnx")
    assert _dims(tmp_path / "cnn.onnx") == ["batch", 1, 8, 8]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_onnx(CrossAttention().eval(), (torch.randint(0, 50, (2, 5)),) * 2, tmp_path / "x.onnx")
