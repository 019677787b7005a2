"""SAM-DA: a decoder adapter for the SAM mask decoder (arXiv 2501.06836, WACV 2025).

SAM's mask decoder is a two-way transformer: a handful of *tokens* (the box prompt's two corner
tokens, an IoU token and the mask tokens) attend to the ``64 x 64`` image embedding and back.
The mask is a dot product between the mask token's output and the upscaled image embedding, so
changing what the tokens "know" changes the mask.

SAM-DA adds ``n_tokens`` learnable **adapter tokens** ``T`` at each attention site where the
decoder's tokens read the image (the token->image cross-attention of each
``TwoWayAttentionBlock``, and the final token->image attention). The decoder's tokens attend to
them (Q from the decoder tokens, K and V from the adapter tokens) and the result is added through
a zero-initialised gate, as in LLaMA-Adapter::

    out = Attn_base(q, k, v) + tanh(g) * Attn_adapter(Q=q, K=T, V=T)          g = 0 at init

so an untrained adapter leaves the model's output exactly unchanged (``x + 0 * y == x``).

The adapter *wraps* the decoder's attention layers (``base_layer`` + adapter, as peft's LoRA
layers do); every adapter parameter name starts with ``adapter_``, so freezing and saving filter
by name. It works on any decoder whose transformer has SAM's layout (``layers[i].
cross_attn_token_to_image`` and ``final_attn_token_to_image``): LiteMedSAM, SAM and MedSAM
ViT-B share it.

Unlike LoRA, the adapter cannot be merged into the base weights (it is a second, non-linear
attention); :func:`remove` unwraps it and returns the original decoder exactly.

Verbs: :func:`inject`, :func:`remove`, :func:`adapter_parameters`, :func:`adapter_state_dict`,
:func:`load_adapter_state_dict`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ADAPTER_PREFIX", "DecoderAdapterConfig", "AdapterAttention", "inject", "remove", "is_injected",
           "adapter_parameters", "adapter_state_dict", "load_adapter_state_dict"]

#: Every adapter parameter's own name starts with this, so ``"adapter_" in name`` finds them all.
ADAPTER_PREFIX = "adapter_"


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DecoderAdapterConfig:
    """Size of the decoder adapter.

    Attributes:
        n_tokens: learnable adapter tokens per attention site.
        adapter_dim: inner width of the adapter attention (Q, K, V project to it); small keeps the
            adapter under 1% of LiteMedSAM's 9.8 M parameters (16 -> 56 k parameters, 0.57%).
        num_heads: heads of the adapter attention (must divide ``adapter_dim``).
        include_final: also adapt the decoder's final token->image attention (not only the
            ``TwoWayAttentionBlock`` layers).
        init_std: standard deviation of the adapter tokens' initialisation.
    """

    n_tokens: int = 8
    adapter_dim: int = 16
    num_heads: int = 2
    include_final: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.n_tokens < 1 or self.adapter_dim < 1 or self.num_heads < 1:
            raise ValueError(f"n_tokens, adapter_dim and num_heads must be >= 1, got {self}")
        if self.adapter_dim % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide adapter_dim ({self.adapter_dim})")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")


# ---------------------------------------------------------------------------------------------
# the wrapped layer
# ---------------------------------------------------------------------------------------------

class AdapterAttention(nn.Module):
    """A SAM ``Attention`` layer plus gated attention from its queries to learnable adapter tokens.

    Args:
        base_layer: the decoder's attention ``forward(q, k, v) -> (B, N_q, C)`` (kept frozen).
        dim: token width ``C`` (256 for the SAM family).
        config: :class:`DecoderAdapterConfig`.

    Parameters (all named ``adapter_*``): ``adapter_tokens`` ``(n_tokens, C)``, the projections
    ``adapter_q``, ``adapter_k``, ``adapter_v`` (``C -> adapter_dim``) and ``adapter_out``
    (``adapter_dim -> C``), and the scalar ``adapter_gate`` (0 at init).
    """

    def __init__(self, base_layer: nn.Module, dim: int, config: DecoderAdapterConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.num_heads = config.num_heads
        self.adapter_tokens = nn.Parameter(torch.randn(config.n_tokens, dim) * config.init_std)
        self.adapter_q = nn.Linear(dim, config.adapter_dim)
        self.adapter_k = nn.Linear(dim, config.adapter_dim)
        self.adapter_v = nn.Linear(dim, config.adapter_dim)
        self.adapter_out = nn.Linear(config.adapter_dim, dim)
        self.adapter_gate = nn.Parameter(torch.zeros(()))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)  # (B, heads, N, d_h)

    def adapter_attention(self, q: torch.Tensor) -> torch.Tensor:
        """``Attn(Q=q, K=T, V=T)``: ``(B, N_q, C)`` decoder-token queries -> ``(B, N_q, C)``."""
        tokens = self.adapter_tokens.unsqueeze(0).expand(q.shape[0], -1, -1)  # (B, n_tokens, C)
        q_h = self._heads(self.adapter_q(q))  # (B, heads, N_q, d_h)
        k_h = self._heads(self.adapter_k(tokens))  # (B, heads, n_tokens, d_h)
        v_h = self._heads(self.adapter_v(tokens))  # (B, heads, n_tokens, d_h)
        attn = torch.softmax(q_h @ k_h.transpose(-1, -2) / math.sqrt(q_h.shape[-1]), dim=-1)  # (B, heads, N_q, n_tokens)
        out = (attn @ v_h).transpose(1, 2).flatten(2)  # (B, N_q, adapter_dim)
        return self.adapter_out(out)  # (B, N_q, C)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``base_layer(q, k, v) + tanh(gate) * Attn(Q=q, K=T, V=T)``, all ``(B, N_q, C)``."""
        return self.base_layer(q=q, k=k, v=v) + torch.tanh(self.adapter_gate) * self.adapter_attention(q)


# ---------------------------------------------------------------------------------------------
# verbs
# ---------------------------------------------------------------------------------------------

def _sites(mask_decoder: nn.Module, include_final: bool) -> list[tuple[nn.Module, str]]:
    """``(parent, attribute)`` of each token->image attention of a SAM-layout decoder."""
    transformer = getattr(mask_decoder, "transformer", None)
    if transformer is None or not hasattr(transformer, "layers"):
        raise ValueError(f"inject expects a SAM MaskDecoder (with .transformer.layers), got {type(mask_decoder).__name__}; "
                         "pass model.mask_decoder, not the whole model")
    sites = [(layer, "cross_attn_token_to_image") for layer in transformer.layers]
    if include_final:
        sites.append((transformer, "final_attn_token_to_image"))
    for parent, attr in sites:
        if not hasattr(parent, attr):
            raise ValueError(f"{type(parent).__name__} has no {attr!r}: not a SAM two-way transformer")
    return sites


def is_injected(mask_decoder: nn.Module) -> bool:
    """Whether ``mask_decoder`` holds at least one :class:`AdapterAttention`."""
    return any(isinstance(m, AdapterAttention) for m in mask_decoder.modules())


def inject(mask_decoder: nn.Module, config: DecoderAdapterConfig | None = None, *,
           layer: type[AdapterAttention] = AdapterAttention) -> nn.Module:
    """Wrap each token->image attention of a SAM mask decoder with an :class:`AdapterAttention` (in place).

    Afterwards only the adapter parameters of ``mask_decoder`` require grad; the rest is frozen.
    The output is unchanged until the gates move away from 0.

    Args:
        mask_decoder: ``model.mask_decoder`` of a LiteMedSAM / SAM / MedSAM ``PromptableSegmenter``.
        config: adapter size (default :class:`DecoderAdapterConfig`).
        layer: the wrapping class, :class:`AdapterAttention` or a subclass (notebook 05's exercise
            writes one).

    Returns:
        ``mask_decoder`` (same object).
    """
    config = config or DecoderAdapterConfig()
    if is_injected(mask_decoder):
        raise ValueError("this decoder already holds an adapter: call remove() first")
    if not (isinstance(layer, type) and issubclass(layer, AdapterAttention)):
        raise ValueError(f"inject: layer must be AdapterAttention or a subclass of it, got {layer!r}")
    sites = _sites(mask_decoder, config.include_final)
    dim = mask_decoder.transformer_dim
    device = next(mask_decoder.parameters()).device
    mask_decoder.requires_grad_(False)
    for parent, attr in sites:
        setattr(parent, attr, layer(getattr(parent, attr), dim, config).to(device))
    for name, p in mask_decoder.named_parameters():
        p.requires_grad_(ADAPTER_PREFIX in name)
    return mask_decoder


def remove(mask_decoder: nn.Module) -> nn.Module:
    """Unwrap every :class:`AdapterAttention` (in place): the original decoder, adapter discarded.

    The adapter cannot be *merged* into the decoder's weights (it is a second attention, not a
    linear delta), so this is the adapter's inverse of :func:`inject`.
    """
    if not is_injected(mask_decoder):
        raise ValueError("this decoder holds no adapter: nothing to remove")
    for parent in list(mask_decoder.modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, AdapterAttention):
                setattr(parent, attr, child.base_layer)
    return mask_decoder


def adapter_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (names containing ``adapter_``) of ``module``, e.g. for an optimizer."""
    params = [p for n, p in module.named_parameters() if ADAPTER_PREFIX in n]
    if not params:
        raise ValueError("no adapter parameters found: call inject(model.mask_decoder, config) first")
    return params


def adapter_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the adapter's tensors only (a few hundred kB), keyed as in ``module.state_dict()``."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if ADAPTER_PREFIX in k}


def load_adapter_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load tensors saved by :func:`adapter_state_dict`; every adapter key must match."""
    expected = {k for k in module.state_dict() if ADAPTER_PREFIX in k}
    if set(state) != expected:
        raise ValueError(f"adapter state does not fit: missing {sorted(expected - set(state))[:3]}, "
                         f"unexpected {sorted(set(state) - expected)[:3]}; inject the same DecoderAdapterConfig first")
    module.load_state_dict(state, strict=False)
