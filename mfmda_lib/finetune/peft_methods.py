"""Parameter-efficient fine-tuning (PEFT) of the foundation encoder: LoRA (``peft``) and three hand-written methods.

==================  =======================================================================  ==============
method              what trains (plus the task head, always)                                 from
==================  =======================================================================  ==============
``lora``            low-rank ``B A`` beside the attention ``qkv``/``proj`` Linear layers     ``peft``
                    (``targets="attn"``) or also the MLP ``fc1``/``fc2`` (``"attn_mlp"``)
                    of every block from ``start``: ``W x + (alpha / r) B A x``, ``B = 0``
                    at init (Hu et al. 2021)
``adapter``         a bottleneck ``up(GELU(down(y)))`` added to each block's MLP output        hand-written
                    ``y`` (Houlsby et al. 2019's formulation, one adapter per block as in
                    Pfeiffer et al. 2020); ``up`` is zero-initialised
``visual_prompt``   an additive visual prompt: a learnable ``(C, g, g)`` map, bilinearly     hand-written
                    upsampled to the token grid and added to the tokens entering each block
                    ("deep", one per block); zero-initialised. Our variant of VPT (Jia et
                    al. 2022): extra prompt *tokens* do not fit TinyViT's window attention
``bitfit``          every bias term of the units from ``start`` (Ben Zaken et al. 2022)       hand-written
``full``            every parameter of the units from ``start`` (the reference)               --
==================  =======================================================================  ==============

Every method starts from the foundation model's exact function (``B = 0``, ``up = 0``, prompt 0).
``peft`` (0.21 here) has LoRA and many relatives but no bottleneck adapter, visual prompt or
BitFit for vision backbones, so those three are written here; their parameters carry the prefixes
``adapter_`` and ``prompt_`` so that freezing, counting and saving filter by name, as peft does
with ``lora_``.

Each method is a strategy, :data:`PEFT_STRATEGIES` ``[method]`` (a :class:`PeftMethod`: how it injects, which
parameters train, how it saves and loads). Verbs: :func:`inject` (any method, returns the module to train and its
AdamW groups),
:func:`save_method` / :func:`load_method` (the trained part alone, small files); LoRA also merges
and unmerges through ``peft`` (``merge_adapter``, ``unmerge_adapter``, ``merge_and_unload``).
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .heads import HEAD_LR, TaskModel

__all__ = ["PEFT_METHODS", "LORA_TARGETS", "PeftConfig", "block_names", "lora_target_regex", "inject_lora",
           "BottleneckAdapter", "inject_adapters", "VisualPrompts", "inject_visual_prompts", "configure_bitfit",
           "PeftMethod", "LoraMethod", "PEFT_STRATEGIES", "inject", "task_model", "trained_state_dict", "save_method",
           "load_method"]

PEFT_METHODS = ("lora", "adapter", "visual_prompt", "bitfit", "full")
#: Linear layers of a TinyViT block (``attn.qkv`` ...) that LoRA may wrap.
LORA_TARGETS = {"attn": ("attn.qkv", "attn.proj"), "attn_mlp": ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PeftConfig:
    """One PEFT run.

    Attributes:
        method: one of :data:`PEFT_METHODS`.
        lr: AdamW learning rate of the method's parameters (``full``: the encoder's).
        lr_head: AdamW learning rate of the task head (``None``: the task's :data:`~.heads.HEAD_LR`).
        weight_decay: AdamW weight decay.
        r: LoRA rank.
        alpha: LoRA scale numerator (``None``: ``2 r``, so the scale ``alpha / r`` is 2 at every rank).
        targets: LoRA targets, a key of :data:`LORA_TARGETS`.
        bottleneck: inner width of each bottleneck adapter.
        prompt_grid: side ``g`` of each visual prompt before upsampling.
    """

    method: str
    lr: float = 1e-3
    lr_head: float | None = None
    weight_decay: float = 0.0
    r: int = 8
    alpha: float | None = None
    targets: str = "attn"
    bottleneck: int = 16
    prompt_grid: int = 8

    def __post_init__(self) -> None:
        if self.method not in PEFT_METHODS:
            raise ValueError(f"method must be one of {PEFT_METHODS}, got {self.method!r}")
        if self.targets not in LORA_TARGETS:
            raise ValueError(f"targets must be one of {sorted(LORA_TARGETS)}, got {self.targets!r}")
        if self.r < 1 or self.bottleneck < 1 or self.prompt_grid < 1:
            raise ValueError(f"r, bottleneck and prompt_grid must be >= 1: {self}")
        if self.lr <= 0 or (self.lr_head is not None and self.lr_head <= 0) or self.weight_decay < 0:
            raise ValueError(f"learning rates must be > 0 and weight_decay >= 0: {self}")

    @property
    def label(self) -> str:
        """Short name for tables and files: ``lora_r8_attn``, ``adapter_b16``, ``visual_prompt_g8``, ``bitfit``..."""
        return PEFT_STRATEGIES[self.method].label(self)


def block_names(model: TaskModel) -> list[str]:
    """Transformer blocks among the units ``model`` runs (``layers.i.blocks.j`` / ``blocks.j``)."""
    blocks = [n for n in model.suffix_names if re.fullmatch(r"(layers\.\d+\.)?blocks\.\d+", n)]
    if not blocks:
        raise ValueError(f"no transformer block among the units from {model.names[model.start]!r}: "
                         "start earlier (e.g. at 'layers.3.blocks.0')")
    return blocks


def _block_dim(block: nn.Module) -> int:
    """Token width of a transformer block: the size of its first LayerNorm."""
    for module in block.modules():
        if isinstance(module, nn.LayerNorm):
            return int(module.normalized_shape[0])
    raise ValueError(f"cannot find the token width of {type(block).__name__}: it has no LayerNorm")


def _head_lr(model: TaskModel, config: PeftConfig) -> float:
    return config.lr_head or HEAD_LR[model.task]


def _head_group(model: TaskModel, config: PeftConfig) -> dict:
    return {"name": "head", "params": [p for n, p in model.named_parameters() if n.startswith("head.")],
            "lr": _head_lr(model, config)}


# ---------------------------------------------------------------------------------------------
# LoRA through peft
# ---------------------------------------------------------------------------------------------

def lora_target_regex(model: TaskModel, targets: str = "attn") -> str:
    """A ``peft`` ``target_modules`` regex for the ``targets`` layers of every block ``model`` runs."""
    blocks = "|".join(re.escape(b) for b in block_names(model))
    layers = "|".join(re.escape(t) for t in LORA_TARGETS[targets])
    return rf"encoder\.({blocks})\.({layers})"


def inject_lora(model: TaskModel, config: PeftConfig):
    """``peft.get_peft_model`` with LoRA on the target layers; the head is trained and saved beside it.

    Returns:
        ``(peft_model, param_groups)``: a ``peft.PeftModel`` wrapping ``model`` (only ``lora_`` and
        head parameters train) and its AdamW groups.
    """
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.r, lora_alpha=config.alpha or 2 * config.r, lora_dropout=0.0,
                      target_modules=lora_target_regex(model, config.targets), modules_to_save=["head"])
    head_lr = _head_lr(model, config)
    net = get_peft_model(model, lora)
    head = [p for n, p in net.named_parameters() if p.requires_grad and "modules_to_save" in n]
    low_rank = [p for n, p in net.named_parameters() if p.requires_grad and "lora_" in n]
    return net, [{"name": "head", "params": head, "lr": head_lr},
                 {"name": "lora", "params": low_rank, "lr": config.lr}]


# ---------------------------------------------------------------------------------------------
# bottleneck adapters (hand-written)
# ---------------------------------------------------------------------------------------------

class BottleneckAdapter(nn.Module):
    """Wraps a block's MLP: ``y = mlp(x)``, ``y + up(GELU(down(y)))``; ``up`` starts at zero (identity).

    Args:
        base_layer: the MLP sublayer (its parameters stay frozen).
        dim: token width ``C``; ``bottleneck``: inner width ``b``. Shapes ``(..., C) -> (..., C)``.
    """

    def __init__(self, base_layer: nn.Module, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter_down = nn.Linear(dim, bottleneck)
        self.adapter_up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y + self.adapter_up(F.gelu(self.adapter_down(y)))


def inject_adapters(model: TaskModel, config: PeftConfig) -> TaskModel:
    """Wrap the MLP of every block ``model`` runs with a :class:`BottleneckAdapter` (in place)."""
    for block in model.unit_modules(block_names(model)):
        if not isinstance(block.mlp, BottleneckAdapter):
            block.mlp = BottleneckAdapter(block.mlp, _block_dim(block), config.bottleneck)
    return model


# ---------------------------------------------------------------------------------------------
# additive visual prompts (hand-written)
# ---------------------------------------------------------------------------------------------

class VisualPrompts(nn.Module):
    """Deep additive visual prompts: ``x <- x + upsample(P_l)`` on the tokens entering each block ``l``.

    Args:
        model: the task model; one prompt per block it runs (forward pre-hooks on those blocks).
        grid: prompts are ``(C_l, grid, grid)`` and are upsampled bilinearly to the block's token grid.

    Tokens may be ``(B, L, C)`` with ``L`` a square (TinyViT) or ``(B, g, g, C)`` (SAM ViT).
    :meth:`remove` takes the hooks away.
    """

    def __init__(self, model: TaskModel, grid: int) -> None:
        super().__init__()
        names = block_names(model)
        self.prompt_maps = nn.ParameterDict({
            n.replace(".", "_"): nn.Parameter(torch.zeros(_block_dim(b), grid, grid))
            for n, b in zip(names, model.unit_modules(names))})
        self._handles = [block.register_forward_pre_hook(functools.partial(self._add, n.replace(".", "_")))
                         for n, block in zip(names, model.unit_modules(names))]

    def _add(self, key: str, module: nn.Module, args: tuple) -> tuple:
        x, rest = args[0], args[1:]
        if x.ndim == 3:  # (B, L, C)
            g = int(round(x.shape[1] ** 0.5))
            p = F.interpolate(self.prompt_maps[key][None], size=(g, g), mode="bilinear", align_corners=False)
            return (x + p.flatten(2).transpose(1, 2), *rest)  # (1, L, C) broadcast over B
        p = F.interpolate(self.prompt_maps[key][None], size=x.shape[1:3], mode="bilinear", align_corners=False)
        return (x + p.permute(0, 2, 3, 1), *rest)  # (B, g, g, C)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def inject_visual_prompts(model: TaskModel, config: PeftConfig) -> TaskModel:
    """Attach :class:`VisualPrompts` as ``model.prompt_tuning`` (parameters ``prompt_tuning.prompt_maps.*``)."""
    model.prompt_tuning = VisualPrompts(model, config.prompt_grid)
    return model


# ---------------------------------------------------------------------------------------------
# BitFit (hand-written)
# ---------------------------------------------------------------------------------------------

def configure_bitfit(model: TaskModel) -> list[nn.Parameter]:
    """Make every ``*.bias`` of the units ``model`` runs trainable (in place); returns them."""
    biases = [p for m in model.unit_modules() for n, p in m.named_parameters() if n.endswith("bias")]
    for p in biases:
        p.requires_grad_(True)
    return biases


# ---------------------------------------------------------------------------------------------
# one strategy per method: how it injects, which parameters train, how it saves and loads
# ---------------------------------------------------------------------------------------------

class PeftMethod:
    """A hand-written method: :meth:`add` puts it on the frozen model and returns the parameters it trains;
    the head trains beside them; the trained tensors are saved alone (safetensors + the config as JSON)."""

    def __init__(self, add: Callable[[TaskModel, PeftConfig], list[nn.Parameter]],
                 label: Callable[[PeftConfig], str]) -> None:
        self.add, self.label = add, label

    def inject(self, model: TaskModel, config: PeftConfig) -> tuple[nn.Module, list[dict]]:
        params = self.add(model, config)
        for p in params:
            p.requires_grad_(True)
        model.head.requires_grad_(True)
        return model, [_head_group(model, config), {"name": config.method, "params": params, "lr": config.lr}]

    def save(self, net: nn.Module, config: PeftConfig, folder: Path) -> list[Path]:
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in trained_state_dict(net).items()}
        save_file(state, str(folder / "adapter_model.safetensors"))
        (folder / "peft_config.json").write_text(json.dumps(asdict(config), indent=1))
        return [folder / "adapter_model.safetensors", folder / "peft_config.json"]

    def load(self, model: TaskModel, config: PeftConfig, folder: Path) -> nn.Module:
        from safetensors.torch import load_file

        saved = PeftConfig(**json.loads((folder / "peft_config.json").read_text()))
        if saved != config:
            raise ValueError(f"{folder} was saved for {saved.label} ({saved}), not {config.label}: pass the saved config")
        net, _ = inject(model, config)
        state = load_file(str(folder / "adapter_model.safetensors"))
        missing = set(trained_state_dict(net)) - set(state)
        if missing:
            raise ValueError(f"{folder} lacks {len(missing)} trained tensors of {config.label}, e.g. {sorted(missing)[:3]}")
        net.load_state_dict(state, strict=False)
        return net


class LoraMethod(PeftMethod):
    """LoRA through ``peft``: it wraps the model (a ``peft.PeftModel``), and saves and loads with ``peft``."""

    def __init__(self) -> None:  # noqa: D107 (nothing to add by hand: peft injects)
        pass

    def label(self, config: PeftConfig) -> str:
        return f"lora_r{config.r}_{config.targets}"

    def inject(self, model: TaskModel, config: PeftConfig) -> tuple[nn.Module, list[dict]]:
        return inject_lora(model, config)

    def save(self, net: nn.Module, config: PeftConfig, folder: Path) -> list[Path]:
        net.save_pretrained(str(folder))
        return sorted(p for p in folder.iterdir() if p.suffix in (".json", ".safetensors"))

    def load(self, model: TaskModel, config: PeftConfig, folder: Path) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(folder))


def _adapter_parameters(model: TaskModel, config: PeftConfig) -> list[nn.Parameter]:
    inject_adapters(model, config)
    return [p for n, p in model.named_parameters() if "adapter_" in n]


def _prompt_parameters(model: TaskModel, config: PeftConfig) -> list[nn.Parameter]:
    return list(inject_visual_prompts(model, config).prompt_tuning.parameters())


#: the strategy of each of :data:`PEFT_METHODS`
PEFT_STRATEGIES: dict[str, PeftMethod] = {
    "lora": LoraMethod(),
    "adapter": PeftMethod(_adapter_parameters, lambda c: f"adapter_b{c.bottleneck}"),
    "visual_prompt": PeftMethod(_prompt_parameters, lambda c: f"visual_prompt_g{c.prompt_grid}"),
    "bitfit": PeftMethod(lambda model, config: configure_bitfit(model), lambda c: "bitfit"),
    "full": PeftMethod(lambda model, config: [p for m in model.unit_modules() for p in m.parameters()],
                       lambda c: "full"),
}


def inject(model: TaskModel, config: PeftConfig) -> tuple[nn.Module, list[dict]]:
    """Prepare ``model`` for ``config.method``: freeze it, add the method, unfreeze what trains.

    Returns:
        ``(net, param_groups)``: the module to train (a ``peft.PeftModel`` for LoRA, else ``model``)
        and AdamW groups ``[{"name", "params", "lr"}, ...]`` (head first).
    """
    model.requires_grad_(False)
    return PEFT_STRATEGIES[config.method].inject(model, config)


def task_model(net: nn.Module) -> TaskModel:
    """The :class:`TaskModel` inside ``net`` (``net`` itself, or the base model of a ``peft.PeftModel``)."""
    if isinstance(net, TaskModel):
        return net
    base = net.get_base_model() if hasattr(net, "get_base_model") else None
    if not isinstance(base, TaskModel):
        raise TypeError(f"expected a TaskModel or a PeftModel around one, got {type(net).__name__}")
    return base


# ---------------------------------------------------------------------------------------------
# saving the trained part alone
# ---------------------------------------------------------------------------------------------

def trained_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (method + head), detached CPU copies, keyed as in ``net.state_dict()``."""
    return {n: p.detach().cpu().clone() for n, p in net.named_parameters() if p.requires_grad}


def save_method(net: nn.Module, config: PeftConfig, folder: str | Path) -> list[Path]:
    """Save only what ``config.method`` trained into ``folder``; returns the files written.

    LoRA: ``peft``'s ``save_pretrained`` (``adapter_config.json`` + ``adapter_model.safetensors``).
    Others: ``peft_config.json`` + ``adapter_model.safetensors`` of :func:`trained_state_dict`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return PEFT_STRATEGIES[config.method].save(net, config, folder)


def load_method(model: TaskModel, config: PeftConfig, folder: str | Path) -> nn.Module:
    """Rebuild ``config.method`` on a fresh ``model`` (foundation weights) and load the saved part from ``folder``."""
    return PEFT_STRATEGIES[config.method].load(model, config, Path(folder))
