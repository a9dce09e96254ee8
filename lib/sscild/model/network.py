"""Network factory: a MONAI U-Net with four outputs (background, normal lung, EF, GGO)."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet

from sscild.profiles import Profile, require_profile

__all__ = ["build_network", "count_parameters", "native_cpu_bf16", "NUM_CLASSES"]

NUM_CLASSES = 4


def build_network(profile: Profile, *, in_channels: int = 1, out_channels: int = NUM_CLASSES) -> torch.nn.Module:
    """Build the profile's segmentation network.

    Example:
        >>> from sscild.profiles import get_profile
        >>> net = build_network(get_profile("smoke"))
        >>> net(torch.zeros(1, 1, 64, 64)).shape
        torch.Size([1, 4, 64, 64])
    """
    p = require_profile(profile)
    if len(p.strides) != len(p.channels) - 1:
        raise ValueError(f"profile {p.name!r}: need len(strides) == len(channels) - 1, got {p.strides} / {p.channels}")
    return UNet(
        spatial_dims=p.spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(p.channels),
        strides=tuple(p.strides),
        num_res_units=p.num_res_units,
        norm=p.norm,
        dropout=p.dropout,
    )


def count_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), so bf16 autocast is faster."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except Exception:  # older or other builds of torch
        return False
