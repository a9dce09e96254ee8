"""Network factory: a U-Net with four outputs (background, normal lung, EF, GGO): MONAI's residual
``UNet`` (the default) or nnU-Net's plain convolutional U-Net (MONAI ``DynUNet``), as the profile's
``architecture`` says."""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet, UNet

from sscild.profiles import Profile, require_profile

__all__ = ["ARCHITECTURES", "build_network", "network_words", "count_parameters", "native_cpu_bf16", "NUM_CLASSES"]

NUM_CLASSES = 4

ARCHITECTURES = ("unet", "plain")
"""The values of a profile's ``architecture`` (:class:`sscild.profiles.Profile`)."""


def build_network(profile: Profile, *, in_channels: int = 1, out_channels: int = NUM_CLASSES) -> torch.nn.Module:
    """Build the profile's segmentation network.

    Example:
        >>> from sscild.profiles import get_profile
        >>> net = build_network(get_profile("smoke"))
        >>> net(torch.zeros(1, 1, 64, 64)).shape
        torch.Size([1, 4, 64, 64])
        >>> plain = build_network(get_profile("smoke").with_overrides(architecture="plain"))
        >>> plain(torch.zeros(1, 1, 64, 64)).shape
        torch.Size([1, 4, 64, 64])
    """
    p = require_profile(profile)
    if len(p.strides) != len(p.channels) - 1:
        raise ValueError(f"profile {p.name!r}: need len(strides) == len(channels) - 1, got {p.strides} / {p.channels}")
    if p.architecture not in ARCHITECTURES:
        raise ValueError(f"profile {p.name!r}: architecture must be one of {', '.join(ARCHITECTURES)}, "
                         f"got {p.architecture!r}")
    if p.architecture == "plain":
        n = len(p.channels)
        return DynUNet(
            spatial_dims=p.spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=[3] * n,
            strides=[1, *p.strides],
            upsample_kernel_size=list(p.strides),
            filters=list(p.channels),
            norm_name=p.norm,
            dropout=p.dropout or None,
            res_block=p.num_res_units > 0,
        )
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


def network_words(profile: Profile) -> str:
    """The profile's network in a few words, for recipe tables.

    Example:
        >>> from sscild.profiles import get_profile
        >>> network_words(get_profile("smoke").with_overrides(architecture="plain", num_res_units=0))
        'plain convolutional U-Net (nnU-Net blocks, MONAI DynUNet), 2D, channels [8, 16, 32], strides [2, 2], batch norm'
    """
    p = require_profile(profile)
    if p.architecture == "plain":
        what = "residual" if p.num_res_units > 0 else "plain"
        return (f"{what} convolutional U-Net (nnU-Net blocks, MONAI DynUNet), {p.spatial_dims}D, channels "
                f"{list(p.channels)}, strides {list(p.strides)}, {p.norm} norm")
    return (f"MONAI UNet, {p.spatial_dims}D, channels {list(p.channels)}, strides {list(p.strides)}, "
            f"{p.num_res_units} residual unit(s), {p.norm} norm")


def count_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), so bf16 autocast is faster."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except Exception:  # older or other builds of torch
        return False
