"""Masked autoencoder (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners").

Hide most patches of an image (random masking, ratio 0.75), encode only the visible ones with
the ViT, and let a light decoder reconstruct the pixels of the hidden ones from the visible
tokens plus a shared learnable ``mask_token``. The loss is the mean squared error on the
*masked* patches only (Sec. 3, "Reconstruction target"), optionally against per-patch
normalised pixels (``norm_pix_loss``), which the paper found gives better representations.
The pixels to rebuild are the ones the encoder reads: standardised per image and channel when
the encoder standardises its input (:attr:`ViTConfig.standardize_input`), so the target, like
the input, carries no camera colour cast.

Sections: config, helpers (masking, loss), model (:class:`MAE` wraps a :class:`ViTEncoder`),
visualisation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .vit import ViTEncoder, patchify, sincos_pos_embed, standardize_images, unpatchify

__all__ = ["MAEConfig", "MAE", "random_masking", "masked_reconstruction_loss"]


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MAEConfig:
    """Masking, decoder and optimisation settings of MAE pretraining.

    Attributes:
        mask_ratio: fraction of patches hidden from the encoder (the paper: 0.75).
        decoder_dim: width of the light decoder.
        decoder_depth: transformer blocks in the decoder.
        decoder_heads: attention heads of the decoder.
        norm_pix_loss: reconstruct per-patch normalised pixels (mean 0, variance 1 per patch).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (the paper: 0.05).
    """

    mask_ratio: float = 0.75
    decoder_dim: int = 64
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True
    lr: float = 1.5e-3
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_dim ({self.decoder_dim}) must be a multiple of decoder_heads")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def random_masking(batch: int, num_patches: int, mask_ratio: float, *, generator: torch.Generator | None = None,
                   device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image random choice of the patches to keep (MAE Sec. 3, "Masking").

    Shuffle the patch indices by argsort of uniform noise and keep the first ``K = round(N (1 - ratio))``.

    Returns:
        ``ids_keep (B, K)``: kept patch indices; ``mask (B, N)``: 1.0 where a patch is hidden;
        ``ids_restore (B, N)``: the permutation that puts shuffled tokens back in patch order.
    """
    keep = round(num_patches * (1 - mask_ratio))
    if not 0 < keep < num_patches:
        raise ValueError(f"random_masking: ratio {mask_ratio} of {num_patches} patches keeps {keep}; "
                         "at least one patch must be kept and one hidden")
    noise = torch.rand(batch, num_patches, generator=generator, device=device)  # (B, N)
    ids_shuffle = noise.argsort(dim=1)  # (B, N): ascending noise, kept first
    ids_restore = ids_shuffle.argsort(dim=1)  # (B, N)
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # (B, N) in patch order
    return ids_shuffle[:, :keep], mask, ids_restore


def masked_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden patches only.

    Args:
        pred, target: ``(B, N, P)`` predicted and true patch pixels.
        mask: ``(B, N)``, 1 where the patch was hidden from the encoder.
    """
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, N)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------

class MAE(nn.Module):
    """A masked autoencoder around ``encoder``: ``loss, pred, mask = mae(x)``.

    The encoder keeps its own weights (``mae.encoder``), so after pretraining it is handed to
    the downstream heads on its own; the decoder is thrown away.
    """

    def __init__(self, encoder: ViTEncoder, config: MAEConfig | None = None) -> None:
        super().__init__()
        self.encoder, self.config = encoder, config or MAEConfig()
        vit, cfg = encoder.config, self.config
        self.decoder_embed = nn.Linear(vit.dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(cfg.decoder_dim, vit.grid), persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(cfg.decoder_dim, cfg.decoder_heads, 4.0, qkv_bias=True)
                                            for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, vit.patch_size ** 2 * 3)
        nn.init.normal_(self.mask_token, std=0.02)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The image as the encoder reads it: ``x (B, 3, S, S)``, standardised if the encoder standardises."""
        return standardize_images(x)[0] if self.encoder.config.standardize_input else x

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction target ``(B, N, p*p*3)``: the patches, normalised per patch if ``norm_pix_loss``."""
        patches = patchify(self.pixels(x), self.encoder.config.patch_size)  # (B, N, P)
        if self.config.norm_pix_loss:
            mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
            patches = (patches - mean) / (var + 1e-6).sqrt()
        return patches

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Visible tokens ``(B, 1 + K, D)`` -> predicted pixels of every patch ``(B, N, p*p*3)``."""
        z = self.decoder_embed(latent)  # (B, 1 + K, Dd)
        b, n = ids_restore.shape
        fill = self.mask_token.expand(b, n - (z.shape[1] - 1), -1)  # (B, N - K, Dd)
        z_ = torch.cat([z[:, 1:], fill], dim=1)  # (B, N, Dd) in shuffled order
        z_ = torch.gather(z_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, z.shape[-1]))  # (B, N, Dd) patch order
        z = torch.cat([z[:, :1], z_ + self.decoder_pos_embed], dim=1)  # (B, 1 + N, Dd)
        for block in self.decoder_blocks:
            z = block(z)
        return self.decoder_pred(self.decoder_norm(z))[:, 1:]  # (B, N, P)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (B, 3, S, S)`` -> ``(loss, pred (B, N, P), mask (B, N))``."""
        ids_keep, mask, ids_restore = random_masking(len(x), self.encoder.config.num_patches, self.config.mask_ratio,
                                                     generator=generator, device=x.device)
        latent = self.encoder(x, ids_keep)  # (B, 1 + K, D)
        pred = self.decode(latent, ids_restore)  # (B, N, P)
        return masked_reconstruction_loss(pred, self.target(x), mask), pred, mask

    # -----------------------------------------------------------------------------------------
    # visualisation
    # -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the encoder saw and what came back, both as images ``(B, 3, S, S)`` in ``x``'s scale.

        With ``norm_pix_loss`` the predicted patches are put back on each true patch's mean and
        variance (as in the paper's figures), and a standardised image back on its own channel
        statistics; visible patches are pasted from ``x``.
        """
        p = self.encoder.config.patch_size
        _, pred, mask = self(x, generator)
        if self.encoder.config.standardize_input:
            z, mean_c, std_c = standardize_images(x)  # (B, 3, S, S), (B, 3, 1, 1) x2
        else:
            z, mean_c, std_c = x, torch.zeros(()), torch.ones(())
        patches = patchify(z, p)  # (B, N, P)
        if self.config.norm_pix_loss:
            mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
        m = mask.unsqueeze(-1)  # (B, N, 1)
        visible = unpatchify(patches * (1 - m), p, 3) * std_c + mean_c * (1 - unpatchify(m.expand_as(patches), p, 3))
        pasted = unpatchify(patches * (1 - m) + pred * m, p, 3) * std_c + mean_c
        return visible, pasted
