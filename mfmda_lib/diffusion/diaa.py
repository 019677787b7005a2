"""DIAA, MFM-DA's Dynamic Instance-Aware Adaptor: where, in feature space, should each image move?

Adapting a diffusion model from K target images alone invites memorisation (the model learns to
draw those K images). MFM-DA instead tells the model *in which direction* to move each source
image in the feature space of a frozen encoder ``f`` (:mod:`.features`):

- the **static direction** is the same for every image, the difference of the domain centroids::

      c_S = mean f(x) over source images,   c_T = mean f(x) over the K target images
      Delta_static = c_T - c_S

- the **dynamic direction** depends on the image (an unusually dark source image needs a
  different push than an unusually bright one)::

      Delta_dynamic = tanh( W2 ReLU( W1 (f(x_S) - c_T) ) )

- a **gate** mixes the two per image::

      g = sigmoid( W_g ReLU( W_e f(x_S) ) ),     Delta = g * Delta_dynamic + (1 - g) * Delta_static

Initialisation, as in the authors' ``DirectionAdapter``: ``W1`` and ``W2`` drawn from ``N(0, 0.01)``
with zero biases (``Delta_dynamic`` starts near 0), ``W_e`` and ``W_g`` with PyTorch's default
initialisation and ``W_g``'s bias at -5, so ``g ~ sigmoid(-5) ~ 0.007`` (a little different per image):
at initialisation ``Delta ~ Delta_static``. Training (through the distribution-consistency loss)
opens the gate only where the instance-aware direction helps; :meth:`DIAA.gate` of the target
images after training says whether it did.
Shapes: ``D`` = feature dimension, ``B`` = batch.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DIAA"]

GATE_BIAS_INIT = -5.0


class DIAA(nn.Module):
    """The adaptor. All its parameters are named ``w1``, ``w2``, ``w_e``, ``w_g`` (Linear layers).

    Args:
        c_source: ``(D,)`` source centroid ``c_S``.
        c_target: ``(D,)`` target centroid ``c_T``.
        hidden: width of the dynamic branch (``4 D`` in MFM-DA: 512 -> 2048 -> 512).
        gate_hidden: width of the gate branch (``D / 2``: 512 -> 256 -> 1).
        init_std: standard deviation of ``W1``'s and ``W2``'s initial weights (the authors': 0.01).
        seed: seed of the initialisation (the global RNG is left untouched).
    """

    def __init__(self, c_source: torch.Tensor, c_target: torch.Tensor, *, hidden: int | None = None,
                 gate_hidden: int | None = None, init_std: float = 0.01, seed: int = 0) -> None:
        super().__init__()
        if c_source.ndim != 1 or c_source.shape != c_target.shape:
            raise ValueError(f"c_source and c_target must be (D,) vectors of one size, got "
                             f"{tuple(c_source.shape)} and {tuple(c_target.shape)}")
        dim = c_source.numel()
        self.register_buffer("c_source", c_source.detach().float().clone())
        self.register_buffer("c_target", c_target.detach().float().clone())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.w1 = nn.Linear(dim, hidden or 4 * dim)
            self.w2 = nn.Linear(hidden or 4 * dim, dim)
            self.w_e = nn.Linear(dim, gate_hidden or max(1, dim // 2))
            self.w_g = nn.Linear(gate_hidden or max(1, dim // 2), 1)
            for layer in (self.w1, self.w2):
                nn.init.normal_(layer.weight, std=init_std)
                nn.init.zeros_(layer.bias)
        nn.init.constant_(self.w_g.bias, GATE_BIAS_INIT)

    @property
    def delta_static(self) -> torch.Tensor:
        """``(D,)`` ``Delta_static = c_T - c_S``."""
        return self.c_target - self.c_source

    def delta_dynamic(self, f_source: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` -> ``(B, D)``: ``tanh(W2 ReLU(W1 (f(x_S) - c_T)))``."""
        return torch.tanh(self.w2(torch.relu(self.w1(f_source - self.c_target))))

    def gate(self, f_source: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` -> ``(B, 1)``: ``g = sigmoid(W_g ReLU(W_e f(x_S)))``."""
        return torch.sigmoid(self.w_g(torch.relu(self.w_e(f_source))))

    def forward(self, f_source: torch.Tensor) -> torch.Tensor:
        """``Delta = g * Delta_dynamic + (1 - g) * Delta_static``: ``(B, D)`` -> ``(B, D)``."""
        g = self.gate(f_source)  # (B, 1)
        return g * self.delta_dynamic(f_source) + (1 - g) * self.delta_static
