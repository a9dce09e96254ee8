"""Deep supervision for the MONAI U-Net: auxiliary outputs on the decoder, used by training only.

nnU-Net trains its decoder to segment at every resolution: a 1x1 convolution on each of the
deepest decoder levels gives class scores at 1/2, 1/4, ... of the input size, each compared with
the label taken down to that size (nearest neighbour), and the losses are summed with weights
halving per level (1, 1/2, 1/4, ..., normalised to sum 1). The heads read the decoder's features
through forward hooks, so the network itself is unchanged: the saved model, inference and
``sscild segment`` never see them.

Example:
    >>> import torch
    >>> from monai.networks.nets import UNet
    >>> net = UNet(2, 1, 3, (8, 16, 32, 64), (2, 2, 2), num_res_units=1)
    >>> ds = DeepSupervision(net, num_classes=3, levels=2)
    >>> out = net(torch.zeros(1, 1, 32, 32))
    >>> [tuple(a.shape) for a in ds.aux_logits()]
    [(1, 3, 16, 16), (1, 3, 8, 8)]
    >>> [round(w, 3) for w in ds.weights]
    [0.571, 0.286, 0.143]
"""

from __future__ import annotations

import torch
from monai.networks.layers.simplelayers import SkipConnection

__all__ = ["DeepSupervision", "decoder_stages"]


def decoder_stages(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder's up-sampling stages of a MONAI ``UNet``, from the output (full size) down."""
    m, ups = getattr(net, "model", None), []
    while isinstance(m, torch.nn.Sequential) and len(m) == 3 and isinstance(m[1], SkipConnection):
        ups.append(m[2])
        m = m[1].submodule
    if not ups:
        raise ValueError(f"deep supervision needs a MONAI UNet; got {type(net).__name__}")
    return ups


class DeepSupervision(torch.nn.Module):
    """Auxiliary heads on the ``levels`` decoder stages below the output of ``net`` (a MONAI UNet).

    After each forward pass of ``net``, :meth:`aux_logits` gives the heads' class scores (finest
    first) and :meth:`loss` the weighted sum of ``loss_fn`` over the output and every head."""

    def __init__(self, net: torch.nn.Module, num_classes: int, levels: int):
        super().__init__()
        ups = decoder_stages(net)
        if not 1 <= int(levels) < len(ups):
            raise ValueError(f"deep_supervision must be 0 (off) or 1..{len(ups) - 1} for this network "
                             f"({len(ups)} decoder stages), got {levels!r}")
        channels = list(net.channels)
        dims = int(net.dimensions)
        conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
        self.heads = torch.nn.ModuleList(conv(channels[i], num_classes, kernel_size=1) for i in range(int(levels)))
        raw = [0.5 ** i for i in range(int(levels) + 1)]
        self.weights = [w / sum(raw) for w in raw]
        self._feats: dict[int, torch.Tensor] = {}
        for i in range(int(levels)):
            ups[i + 1].register_forward_hook(self._keeper(i))

    def _keeper(self, i: int):
        def hook(_module, _inputs, output):
            self._feats[i] = output
        return hook

    def aux_logits(self) -> list[torch.Tensor]:
        """Class scores of each head from the last forward pass, finest first."""
        return [head(self._feats[i]) for i, head in enumerate(self.heads)]

    def loss(self, loss_fn, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``loss_fn`` on the output and on each head against the label at the head's size, weighted."""
        total = self.weights[0] * loss_fn(logits.float(), y)
        for w, aux in zip(self.weights[1:], self.aux_logits()):
            step = y.shape[-1] // aux.shape[-1]
            yd = y[(slice(None), slice(None)) + (slice(None, None, step),) * (y.ndim - 2)]
            total = total + w * loss_fn(aux.float(), yd)
        return total
