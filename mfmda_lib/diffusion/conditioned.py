"""MFM-DA's content-conditioned DDPM: the source U-Net told *what* to draw by the source image itself.

To translate a source image rather than generate a random one, MFM-DA gives the denoiser a
second input, the **content condition** ``x_c``: the same source image noised to the same step
``t``. A frozen copy of the source U-Net's down path encodes it to bottleneck features ``h_c``;
a time gate decides how much of it to trust; a small conv stack fuses it with the main path's
bottleneck features ``h``::

    h, skips = down(x_t, t)                        main path (trainable in stage 1)
    h_c      = down_frozen(x_c, t)                 content path (frozen copy of the source down path)
    m(t)     = sigmoid((t - t_gate) / w)           ~1 for t > 300, ~0 below (w = 1: nearly a step)
    h_c     <- m(t) h_c + (1 - m(t)) eps           below t_gate the condition is replaced by noise
    h       <- h + Fuse([h, h_c])                  Fuse: conv 3x3 -> GroupNorm -> SiLU -> conv 3x3 (zero-init)
    eps_theta = up(h, skips, t)

Why a gate: at large ``t`` the noisy input has lost the layout (where the disc and the vessels
are), so the condition supplies it; at small ``t`` only fine detail and texture are decided,
and those should come from the (target-adapted) model, not from the source, so the condition is
switched off. The last fusion conv starts at zero, so an untrained fusion leaves the U-Net's
output exactly unchanged.

We run diffusers' ``UNet2DModel`` blocks explicitly (``down`` / ``up`` below) instead of
``unet(x, t)``, to reach the bottleneck between them; the result equals ``unet(x, t).sample``
when no condition is given.
"""
from __future__ import annotations

import copy

import torch
from diffusers import UNet2DModel
from torch import nn

__all__ = ["BottleneckFusion", "ContentConditionedUNet", "time_gate", "unet_down", "unet_up"]


# ---------------------------------------------------------------------------------------------
# running a UNet2DModel in two halves
# ---------------------------------------------------------------------------------------------

def _check_plain(unet: UNet2DModel) -> None:
    cfg = unet.config
    if cfg.center_input_sample or cfg.time_embedding_type != "positional" or unet.class_embedding is not None:
        raise ValueError("ContentConditionedUNet supports plain UNet2DModels (positional time embedding, "
                         "no class embedding, no input centring): build them with diffusion.ddpm.build_unet")
    if any(hasattr(block, "skip_conv") for block in list(unet.down_blocks) + list(unet.up_blocks)):
        raise ValueError("ContentConditionedUNet does not support skip-connection blocks (SkipDownBlock2D)")


def unet_down(unet: UNet2DModel, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, tuple, torch.Tensor]:
    """The down path and mid block of a U-Net.

    Args:
        unet: a plain ``UNet2DModel``.
        x: ``(B, 3, S, S)`` noisy images; t: ``(B,)`` integer timesteps.

    Returns:
        ``h`` the bottleneck ``(B, C_last, S / 2**(L-1), S / 2**(L-1))``, the skip tensors for the
        up path, and the time embedding ``(B, 4 * C_first)``.
    """
    t = t.to(x.device).reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.to(x.device)
    emb = unet.time_embedding(unet.time_proj(t).to(dtype=x.dtype))  # (B, 4 C_first)
    h = unet.conv_in(x)
    skips = (h,)
    for block in unet.down_blocks:
        h, res = block(hidden_states=h, temb=emb)
        skips += res
    if unet.mid_block is not None:
        h = unet.mid_block(h, emb)  # (B, C_last, s, s)
    return h, skips, emb


def unet_up(unet: UNet2DModel, h: torch.Tensor, skips: tuple, emb: torch.Tensor) -> torch.Tensor:
    """The up path of a U-Net from (possibly modified) bottleneck features: returns ``(B, 3, S, S)``."""
    for block in unet.up_blocks:
        res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
        h = block(h, res, emb)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


# ---------------------------------------------------------------------------------------------
# the gate and the fusion block
# ---------------------------------------------------------------------------------------------

def time_gate(t: torch.Tensor, center: float = 300.0, width: float = 1.0) -> torch.Tensor:
    """``m(t) = sigmoid((t - center) / width)``: ``(B,)`` timesteps -> ``(B, 1, 1, 1)`` weights in (0, 1)."""
    return torch.sigmoid((t.float() - center) / width).view(-1, 1, 1, 1)


class BottleneckFusion(nn.Module):
    """``h + Fuse([h, h_c])``: ``(B, C, s, s)`` twice -> ``(B, C, s, s)``; zero at init (identity)."""

    def __init__(self, channels: int, groups: int = 8) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(groups, channels)
        self.act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, h: torch.Tensor, h_c: torch.Tensor) -> torch.Tensor:
        return h + self.conv_out(self.act(self.norm(self.conv_in(torch.cat([h, h_c], dim=1)))))


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------

class ContentConditionedUNet(nn.Module):
    """``eps_theta(x_t, t | x_c)``: a source U-Net wrapped with a frozen content path and a fusion block.

    Args:
        unet: the source DDPM's U-Net (its weights are used, not copied; stage 1 trains them).
        gate_center, gate_width: ``m(t) = sigmoid((t - gate_center) / gate_width)``.

    Attributes:
        unet: the main denoiser.
        content_encoder: a frozen deep copy of ``unet`` taken at construction (only its time
            embedding, ``conv_in``, down blocks and mid block are used; its up path is dropped).
        fusion: :class:`BottleneckFusion`, the only new parameters.
    """

    def __init__(self, unet: UNet2DModel, *, gate_center: float = 300.0, gate_width: float = 1.0) -> None:
        super().__init__()
        _check_plain(unet)
        if gate_width <= 0:
            raise ValueError(f"gate_width must be > 0, got {gate_width}")
        self.unet = unet
        self.content_encoder = copy.deepcopy(unet)
        self.content_encoder.up_blocks = nn.ModuleList()  # (B, C, s, s) features only: no up path
        self.content_encoder.requires_grad_(False).eval()
        self.fusion = BottleneckFusion(unet.config.block_out_channels[-1], unet.config.norm_num_groups)
        self.gate_center, self.gate_width = float(gate_center), float(gate_width)

    def train(self, mode: bool = True) -> "ContentConditionedUNet":
        super().train(mode)
        self.content_encoder.eval()  # frozen: always in eval mode
        return self

    def bottleneck_shape(self, batch: int) -> tuple[int, int, int, int]:
        """Shape of ``h`` and of the gate noise for a batch: ``(B, C_last, s, s)``."""
        cfg = self.unet.config
        side = cfg.sample_size // 2 ** (len(cfg.block_out_channels) - 1)
        return batch, cfg.block_out_channels[-1], side, side

    def reload_content_encoder(self) -> None:
        """Copy the current U-Net's weights into the content path (after loading source weights)."""
        state = {k: v for k, v in self.unet.state_dict().items() if not k.startswith(("up_blocks.",))}
        self.content_encoder.load_state_dict(state, strict=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, x_c: torch.Tensor | None = None,
                gate_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise.

        Args:
            x_t: ``(B, 3, S, S)`` noisy images; t: ``(B,)`` timesteps.
            x_c: ``(B, 3, S, S)`` content condition (the source image noised to ``t``), or ``None``
                for the unconditional source DDPM.
            gate_noise: ``(B, C_last, s, s)`` the ``eps`` that replaces the condition below the gate
                (drawn with ``torch.randn`` when ``None``).

        Returns:
            ``(B, 3, S, S)`` ``eps_theta``.
        """
        h, skips, emb = unet_down(self.unet, x_t, t)  # h: (B, C, s, s)
        if x_c is not None:
            h_c, _, _ = unet_down(self.content_encoder, x_c, t)  # (B, C, s, s)
            noise = torch.randn_like(h_c) if gate_noise is None else gate_noise.to(h_c)
            m = time_gate(t.to(h.device).reshape(-1).expand(x_t.shape[0]), self.gate_center, self.gate_width)
            h = self.fusion(h, m * h_c + (1 - m) * noise)
        return unet_up(self.unet, h, skips, emb)
