"""Zero-padding ("option A") ResNet shortcut as a module, and the pruner of such channel placements."""

from typing import Sequence

import torch
from torch import nn
from torch_pruning.pruner.function import BasePruningFunc

__all__ = ["ZeroPadShortcut", "PlacementPruner", "ZeroPadShortcutPruner"]


class _Placement(nn.Module):
    """A parameter-free op that places input channels ``src`` at output channels ``dst``."""

    in_channels: int
    out_channels: int
    src: torch.Tensor
    dst: torch.Tensor


class ZeroPadShortcut(_Placement):
    """Subsample spatially, then place the input channels among zero channels.

    This is the parameter-free shortcut of the CIFAR ResNets (He et al., option A)::

        F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))

    written as a module that knows which output channel each input channel lands in. LeGR also
    recognizes the ``F.pad`` form (and ``torch.cat`` with zeros) as written in a model, so this
    module is an option, not a requirement: it makes the mapping visible in the model's repr and
    costs nothing at run time.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output; the extra ones are zero.
        stride: spatial subsampling step.
        offset: output channel of input channel 0; default ``(out_channels - in_channels) // 2``,
            which reproduces the symmetric ``F.pad`` above.

    Example::

        >>> import torch
        >>> import torch.nn.functional as F
        >>> x = torch.randn(2, 16, 8, 8)
        >>> ref = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
        >>> torch.equal(ZeroPadShortcut(16, 32, stride=2)(x), ref)
        True
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2, offset: int = None) -> None:
        super().__init__()
        if offset is None:
            offset = (out_channels - in_channels) // 2
        if offset < 0 or offset + in_channels > out_channels:
            raise ValueError(
                f"`ZeroPadShortcut` places {in_channels} input channels at offset {offset}, which does not fit"
                f" in {out_channels} output channels."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        # Not persistent: the pretrained option-A state dicts have no such keys; a pruned model's mapping
        # is rebuilt by replaying its pruning record.
        self.register_buffer("src", torch.arange(in_channels), persistent=False)
        self.register_buffer("dst", torch.arange(in_channels) + offset, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        out = x.new_zeros((x.shape[0], self.out_channels) + tuple(x.shape[2:]))
        return out.index_copy(1, self.dst, x.index_select(1, self.src))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def _drop(channels: torch.Tensor, pruned: Sequence[int], size: int):
    """Return (mask of kept entries of `channels`, renumbering of the surviving channels)."""
    removed = torch.zeros(size, dtype=torch.bool, device=channels.device)
    removed[list(pruned)] = True
    new_index = torch.cumsum(~removed, 0) - 1
    return ~removed[channels], new_index


class PlacementPruner(BasePruningFunc):
    """torch-pruning handler for :class:`ZeroPadShortcut` and :class:`ChannelPad`.

    Input and output channels are pruned by different functions, so torch-pruning does not couple
    them: each stage keeps its own channel group, as the constant channels in between demand.
    """

    TARGET_MODULES = _Placement

    def prune_out_channels(self, layer: _Placement, idxs: Sequence[int]) -> _Placement:
        keep, new_index = _drop(layer.dst, idxs, layer.out_channels)
        layer.src, layer.dst = layer.src[keep], new_index[layer.dst[keep]]
        layer.out_channels -= len(idxs)
        return layer

    def prune_in_channels(self, layer: _Placement, idxs: Sequence[int]) -> _Placement:
        keep, new_index = _drop(layer.src, idxs, layer.in_channels)
        layer.src, layer.dst = new_index[layer.src[keep]], layer.dst[keep]
        layer.in_channels -= len(idxs)
        return layer

    def get_out_channels(self, layer: _Placement) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: _Placement) -> int:
        return layer.in_channels


ZeroPadShortcutPruner = PlacementPruner  # its name before ChannelPad shared it


