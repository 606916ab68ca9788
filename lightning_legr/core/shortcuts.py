"""Zero-padding ("option A") ResNet shortcut that torch-pruning can prune correctly."""

from typing import Sequence

import torch
from torch import nn
from torch_pruning.pruner.function import BasePruningFunc

__all__ = ["ZeroPadShortcut", "ZeroPadShortcutPruner"]


class ZeroPadShortcut(nn.Module):
    """Subsample spatially, then place the input channels among zero channels.

    This is the parameter-free shortcut of the CIFAR ResNets (He et al., option A)::

        F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))

    written as a module that knows which output channel each input channel lands in. Written with
    ``F.pad`` inside a lambda, the channel offset is baked into the code: torch-pruning then sees an
    element-wise op, couples the two stages' channels one to one, and the pruned network breaks.
    Here the mapping is data (``src`` -> ``dst``), so the input and output channels can be pruned
    independently and the mapping follows.

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


class ZeroPadShortcutPruner(BasePruningFunc):
    """torch-pruning handler for :class:`ZeroPadShortcut`.

    Input and output channels are pruned by different functions, so torch-pruning does not couple
    them: each stage keeps its own channel group, as the zero channels in between demand.
    """

    TARGET_MODULES = ZeroPadShortcut

    def prune_out_channels(self, layer: ZeroPadShortcut, idxs: Sequence[int]) -> ZeroPadShortcut:
        keep, new_index = _drop(layer.dst, idxs, layer.out_channels)
        layer.src, layer.dst = layer.src[keep], new_index[layer.dst[keep]]
        layer.out_channels -= len(idxs)
        return layer

    def prune_in_channels(self, layer: ZeroPadShortcut, idxs: Sequence[int]) -> ZeroPadShortcut:
        keep, new_index = _drop(layer.src, idxs, layer.in_channels)
        layer.src, layer.dst = new_index[layer.src[keep]], layer.dst[keep]
        layer.in_channels -= len(idxs)
        return layer

    def get_out_channels(self, layer: ZeroPadShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ZeroPadShortcut) -> int:
        return layer.in_channels
