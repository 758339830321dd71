"""An ONNX Runtime session that looks like the PyTorch model to tasks (so metrics run on the artifact)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcompress.graph.runtime import OrtModel


class OrtModule:
    """Callable like the source model (`module(**inputs)`), backed by ONNX Runtime.

    Keeps the source model's `tokenize`, so text tasks build the same inputs.

    Example:
        >>> deployed = OrtModule.load("out/model.onnx", model)
        >>> task.evaluate(deployed, test_data)
    """

    def __init__(self, runtime: OrtModel, source: nn.Module | None = None) -> None:
        self.runtime = runtime
        self.tokenize = getattr(source, "tokenize", None)

    @classmethod
    def load(cls, path: str | Path, source: nn.Module | None = None, threads: int | None = None) -> OrtModule:
        return cls(OrtModel.from_path(path, threads=threads), source)

    def eval(self) -> OrtModule:
        return self

    def parameters(self) -> Iterator[torch.Tensor]:
        """No PyTorch tensors (so `model_device` and friends see a CPU model)."""
        return iter(())

    def buffers(self) -> Iterator[torch.Tensor]:
        return iter(())

    def __call__(self, *args: torch.Tensor, **inputs: torch.Tensor) -> Any:
        names = self.runtime.input_names
        feed = dict(zip(names, args, strict=False))
        feed.update(inputs)
        outs = [torch.from_numpy(o) for o in self.runtime.run(feed)]
        return outs[0] if len(outs) == 1 else tuple(outs)
