"""A small U-Net with BatchNorm for optic disc and cup segmentation, trained from scratch on CPU.

The source model of the test-time adaptation notebook (06). It is deliberately tiny (a few
channels, three poolings) so the ``cpu`` profile trains it in minutes, and it keeps BatchNorm in
every block because the normalisation statistics and affine parameters are what most test-time
methods adapt (Ronneberger et al., 2015, with BN after each convolution).

Sections: config -> blocks -> model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNetConfig", "UNet", "OUTPUT_CHANNELS"]

#: Output channel order: per-pixel logits of the disc (cup included) and of the cup.
OUTPUT_CHANNELS = ("disc", "cup")


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UNetConfig:
    """Shape of the U-Net.

    Attributes:
        in_channels: input image channels (RGB: 3).
        out_channels: output logit channels (disc and cup: 2).
        base_channels: channels of the first level; each pooling doubles them.
        depth: number of poolings; input sides must be divisible by ``2 ** depth``.
    """

    in_channels: int = 3
    out_channels: int = len(OUTPUT_CHANNELS)
    base_channels: int = 8
    depth: int = 3

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "base_channels", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1, got {getattr(self, name)}")


# ---------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------

class ConvBlock(nn.Sequential):
    """Two (3x3 conv -> BatchNorm -> ReLU) layers: ``(B, C_in, H, W) -> (B, C_out, H, W)``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Upsample x2, concatenate the skip connection, then a :class:`ConvBlock`."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.block = ConvBlock(c_in + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x (B, C_in, H/2, W/2)``, ``skip (B, C_skip, H, W)`` -> ``(B, C_out, H, W)``."""
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([x, skip], dim=1))  # (B, C_in + C_skip, H, W) -> (B, C_out, H, W)


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------

class UNet(nn.Module):
    """Encoder-decoder with skip connections; returns per-pixel disc and cup logits."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or UNetConfig()
        widths = [config.base_channels * 2 ** i for i in range(config.depth + 1)]  # e.g. 8, 16, 32, 64
        self.down = nn.ModuleList([ConvBlock(config.in_channels, widths[0])]
                                  + [ConvBlock(widths[i], widths[i + 1]) for i in range(config.depth)])
        self.up = nn.ModuleList([UpBlock(widths[i + 1], widths[i], widths[i]) for i in reversed(range(config.depth))])
        self.head = nn.Conv2d(widths[0], config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` float images -> ``(B, out_channels, H, W)`` logits.

        ``H`` and ``W`` must be divisible by ``2 ** depth``.
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"UNet expects (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        factor = 2 ** self.config.depth
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"UNet: image sides {tuple(x.shape[-2:])} must be divisible by {factor} "
                             f"(2 ** depth); resize the input")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))  # (B, widths[i], H / 2**i, W / 2**i)
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            x = block(x, skips.pop())
        return self.head(x)  # (B, out_channels, H, W)
