"""Physically shrink layers: keep a subset of output units or input features (module surgery).

Every function replaces parameters with smaller copies and updates the layer's size attributes,
so the shrunk layer runs (and exports) exactly like a layer built at that size.
"""

from __future__ import annotations

import torch
from torch import nn

from mmcompress.prune.fx_ops import CONVS

GATES = {nn.LSTM: 4, nn.GRU: 3}


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=True)


def keep_outputs(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep output units `keep` of a Linear / Conv1d / Conv2d, or features of a norm layer; a
    depthwise convolution keeps those channels (inputs, outputs and groups).

    Example:
        >>> layer = nn.Linear(4, 6); keep_outputs(layer, torch.tensor([0, 2])); layer.out_features
        2
    """
    keep = keep.to(torch.long)
    if isinstance(module, (nn.Linear, *CONVS)):
        depthwise = isinstance(module, CONVS) and module.groups == module.in_channels == module.out_channels
        if isinstance(module, CONVS) and module.groups != 1 and not depthwise:
            raise ValueError(f"grouped convolution (groups={module.groups}) cannot drop output channels")
        module.weight = _param(module.weight[keep])
        if module.bias is not None:
            module.bias = _param(module.bias[keep])
        if isinstance(module, nn.Linear):
            module.out_features = len(keep)
        else:
            module.out_channels = len(keep)
        if depthwise and module.groups != 1:  # one filter per channel: inputs and groups shrink too
            module.in_channels = module.groups = len(keep)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        _keep_norm(module, keep)
        module.num_features = len(keep)
    elif isinstance(module, nn.LayerNorm):
        _keep_norm(module, keep)
        module.normalized_shape = (len(keep),)
    else:
        hint = " (prune before quantizing)" if hasattr(module, "qweight") else ""
        raise ValueError(f"cannot drop output units of {type(module).__name__}{hint}")
    _drop_mask(module)


def _keep_norm(module: nn.Module, keep: torch.Tensor) -> None:
    if module.weight is not None:
        module.weight = _param(module.weight[keep])
        module.bias = _param(module.bias[keep])
    for name in ("running_mean", "running_var"):
        buffer = getattr(module, name, None)
        if buffer is not None:
            setattr(module, name, buffer[keep].clone())


def dropped_columns(units: int, keep: torch.Tensor, repeat: int = 1, offset: int = 0) -> set[int]:
    """Input columns of a consumer that carry the dropped units (unit u: offset + u*repeat .. + repeat-1).

    Example:
        >>> sorted(dropped_columns(3, torch.tensor([1]), repeat=2, offset=4))
        [4, 5, 8, 9]
    """
    dropped = sorted(set(range(units)) - set(keep.tolist()))
    return {offset + u * repeat + r for u in dropped for r in range(repeat)}


def consumer_columns(inputs: int, units: int, keep: torch.Tensor, repeat: int = 1, offset: int = 0) -> torch.Tensor:
    """Input columns a consumer keeps when a producer of `units` units keeps `keep`: unit u is
    columns offset + u*repeat .. + repeat-1; columns outside that span (other concatenated
    features) stay.

    Example:
        >>> consumer_columns(6, 2, torch.tensor([1]), offset=2)
        tensor([0, 1, 3, 4, 5])
    """
    drop = dropped_columns(units, keep, repeat, offset)
    return torch.tensor([c for c in range(inputs) if c not in drop], dtype=torch.long)


def keep_inputs(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep input columns `keep` of a Linear / Conv1d / Conv2d / single-layer LSTM/GRU.

    Example:
        >>> layer = nn.Linear(6, 3); keep_inputs(layer, torch.tensor([1, 2])); layer.in_features
        2
    """
    keep = keep.to(torch.long)
    if isinstance(module, nn.Linear):
        module.weight = _param(module.weight[:, keep])
        module.in_features = len(keep)
    elif isinstance(module, CONVS):
        if module.groups != 1:
            raise ValueError(f"grouped convolution (groups={module.groups}) cannot drop input channels")
        module.weight = _param(module.weight[:, keep])
        module.in_channels = len(keep)
    elif type(module) in GATES:
        if module.num_layers != 1:
            raise ValueError("only single-layer recurrent modules can drop inputs")
        module.weight_ih_l0 = _param(module.weight_ih_l0[:, keep])
        module.input_size = len(keep)
        module._init_flat_weights()
    else:
        raise ValueError(f"cannot drop inputs of {type(module).__name__}")
    _drop_mask(module)


def keep_hidden_units(module: nn.LSTM | nn.GRU, keep: torch.Tensor) -> None:
    """Keep hidden units `keep` of a single-layer, unidirectional LSTM/GRU (every gate's rows and
    the recurrent weight's columns shrink together).

    Example:
        >>> lstm = nn.LSTM(8, 16, batch_first=True); keep_hidden_units(lstm, torch.arange(4)); lstm.hidden_size
        4
    """
    if module.num_layers != 1 or module.bidirectional or getattr(module, "proj_size", 0):
        raise ValueError("hidden-unit pruning needs a single-layer, unidirectional recurrent module without projection")
    keep = keep.to(torch.long)
    hidden, gates = module.hidden_size, GATES[type(module)]
    rows = torch.cat([keep + g * hidden for g in range(gates)])
    module.weight_ih_l0 = _param(module.weight_ih_l0[rows])
    module.weight_hh_l0 = _param(module.weight_hh_l0[rows][:, keep])
    if module.bias:
        module.bias_ih_l0 = _param(module.bias_ih_l0[rows])
        module.bias_hh_l0 = _param(module.bias_hh_l0[rows])
    module.hidden_size = len(keep)
    module._init_flat_weights()


def keep_heads(q: nn.Linear, k: nn.Linear, v: nn.Linear, out: nn.Linear, heads: torch.Tensor, head_dim: int) -> None:
    """Keep attention heads `heads`: query/key/value output rows and the output projection's inputs.

    Example:
        >>> qkv = [nn.Linear(8, 8) for _ in range(3)]; o = nn.Linear(8, 8)
        >>> keep_heads(*qkv, o, torch.tensor([1]), head_dim=4); o.in_features
        4
    """
    units = (heads.to(torch.long)[:, None] * head_dim + torch.arange(head_dim)).flatten()
    for layer in (q, k, v):
        keep_outputs(layer, units)
    keep_inputs(out, units)


def _drop_mask(module: nn.Module) -> None:
    """An unstructured mask of the old shape no longer applies."""
    if hasattr(module, "weight_mask"):
        del module.weight_mask
