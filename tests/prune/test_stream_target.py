"""Residual-stream targets: a projection that ends a residual block is refit so that the block's
output (its branch plus the pruned model's own stream) matches the unpruned block output."""

import importlib

import torch
from torch import fx, nn

from mmcompress.prune.stream_target import stream_correction, stream_partners
from mmcompress.prune.structured import prune_structured

lockstep_module = importlib.import_module("mmcompress.prune.lockstep")


class Block(nn.Module):
    """An inverted residual in miniature: expand 1x1 -> BN -> ReLU -> project 1x1 -> BN, plus x."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(width, hidden, 1, bias=False), nn.BatchNorm2d(hidden)
        self.project, self.bn2 = nn.Conv2d(hidden, width, 1, bias=False), nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.project(torch.relu(self.bn1(self.expand(x)))))


class TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block1, self.block2 = Block(8, 24), Block(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(self.stem(x)))


def _setup():
    torch.manual_seed(0)
    model = TwoBlocks()
    calib = [torch.randn(16, 3, 8, 8) for _ in range(4)]
    with torch.no_grad():  # running statistics that match the data
        for batch in calib:
            model(batch)
        for norm in (model.block1.bn2, model.block2.bn2):
            norm.weight.uniform_(0.5, 2.0)
    return model.eval(), calib


def _calibration_error(model, reference, calib) -> float:
    with torch.no_grad():
        return sum(float((model(x) - reference(x)).pow(2).sum()) for x in calib)


def _pruned() -> float:
    model, calib = _setup()
    reference = TwoBlocks()
    reference.load_state_dict(model.state_dict())
    reference.eval()
    config = {"ratio": 0.5, "reconstruct": True, "compensate": True}
    targets = {"block1.expand": config, "block2.expand": config, "_default": None}
    prune_structured(model, targets, example_inputs=calib[0][:2], calib=calib)
    return _calibration_error(model, reference, calib)


def test_projections_that_end_residual_blocks_aim_at_the_block_output(monkeypatch):
    """On the calibration data the second block's output is closer to the unpruned one with the stream
    target (its projection makes up for the error the first block left in the stream) than with the
    projection aimed at its own unpruned output."""
    streamed = _pruned()
    monkeypatch.setattr(lockstep_module, "stream_partners", lambda gm, names: {})
    layer_only = _pruned()
    assert streamed < 0.9 * layer_only, (streamed, layer_only)  # measured: 0.84x


def test_stream_partners_find_the_add_through_the_norm():
    model, _ = _setup()
    gm = fx.symbolic_trace(model)
    partners = stream_partners(gm, {"block1.project", "block2.project", "block1.expand"})
    assert set(partners) == {"block1.project", "block2.project"}  # an expand conv ends no branch
    assert partners["block1.project"][0].target == "stem"  # the stream each branch is added to
    other, scale = partners["block2.project"]
    assert other is next(n for n in gm.graph.nodes if n.name == "add")  # block 1's output
    norm = model.block2.bn2
    assert torch.allclose(scale, norm.weight / torch.sqrt(norm.running_var + norm.eps))


def test_dead_norm_channels_get_no_correction():
    correction = stream_correction(torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.tensor([2.0, 0.0, -1.0]))
    assert torch.equal(correction[:, 0], torch.full((2, 4, 4), 0.5))
    assert not correction[:, 1].any() and torch.equal(correction[:, 2], -torch.ones(2, 4, 4))
