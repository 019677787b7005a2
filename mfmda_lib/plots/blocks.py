"""Block diagrams read off a model: which parts are frozen, which train, what a method added.

A :class:`Diagram` is rows of :class:`Block` s drawn left to right with arrows (a row can be a
chain or a set of parallel blocks), extra arrows between rows (``links``) and braces under a run
of blocks (``spans``, e.g. "runs once per image: cached"). The blocks are *computed* from the
modules: :func:`module_block` counts a module's parameters and how many require grad, and
:func:`parameter_blocks` groups a module's parameters by name (``attn.qkv``, ``mlp.fc1``, ...), so a
diagram redrawn after a change to the code shows the change. Parameters whose names carry a
method's prefix (``lora_``, ``adapter_``, ``prompt_``, ``rein_``) count as *new* and get a blue frame.

Colours (Okabe-Ito): frozen grey, training orange, partly training light orange; data white,
operations without parameters light blue, losses with a vermilion frame.

Sections: blocks from modules -> the diagram -> drawing. The method diagrams of the notebooks are
in :mod:`mfmda_lib.plots.diagrams`.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Patch
from torch import nn

__all__ = ["NEW_PREFIXES", "Block", "Row", "Diagram", "count", "parameters_block", "module_block", "parameter_blocks"]

#: Name prefixes of the parameters a method adds to a foundation model (peft and the kit's own).
NEW_PREFIXES = ("lora_", "adapter_", "prompt_", "rein_")
KINDS = ("module", "data", "op", "loss")
_FILL = {"frozen": "#DDDDDD", "trains": "#E69F00", "partial": "#F6D38E", "data": "white", "op": "#D4ECF8",
         "loss": "white", "empty": "#F2F2F2"}
_NEW_EDGE, _LOSS_EDGE = "#0072B2", "#D55E00"
_W, _H, _GAP, _VGAP = 2.3, 1.15, 0.75, 1.0
_WRAP = 27  # characters per line inside a block


def count(n: int) -> str:
    """``1234567 -> '1.23 M'``, ``56032 -> '56.0 k'``, ``514 -> '514'``."""
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e4:
        return f"{n / 1e3:.1f} k"
    return f"{n:,d}"


# ---------------------------------------------------------------------------------------------
# blocks from modules
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """One box of a diagram.

    Attributes:
        label: the first, bold line.
        params: parameters inside (0 for data and operations).
        trainable: how many of them require grad.
        new: how many of them a method added (names with a :data:`NEW_PREFIXES` prefix).
        note: a last line (a shape, "cached on disk", a gate value, a learning rate).
        kind: ``"module"``, ``"data"``, ``"op"`` or ``"loss"``.
    """

    label: str
    params: int = 0
    trainable: int = 0
    new: int = 0
    note: str = ""
    kind: str = "module"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Block {self.label!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not 0 <= self.trainable <= self.params or not 0 <= self.new <= self.params:
            raise ValueError(f"Block {self.label!r}: need 0 <= trainable, new <= params, got {self}")

    @property
    def state(self) -> str:
        """``"frozen"``, ``"trains"``, ``"partial"`` for modules; the kind otherwise."""
        if self.kind != "module":
            return self.kind
        if self.params == 0:
            return "empty"
        if self.trainable == 0:
            return "frozen"
        return "trains" if self.trainable == self.params else "partial"

    def text(self) -> str:
        lines = [self.label]
        if self.kind == "module" and self.params:
            state = {"frozen": "frozen", "trains": "trains",
                     "partial": f"{count(self.trainable)} train"}[self.state]
            lines.append(f"{count(self.params)} · {state}")
            if self.new:
                lines.append(f"+{count(self.new)} new")
        if self.note:
            lines.append(self.note)
        return "\n".join(textwrap.fill(line, _WRAP, break_long_words=True) for line in lines)


def _stats(named: Sequence[tuple[str, nn.Parameter]], prefixes: Sequence[str]) -> tuple[int, int, int]:
    total = sum(p.numel() for _, p in named)
    trainable = sum(p.numel() for _, p in named if p.requires_grad)
    new = sum(p.numel() for n, p in named if any(pre in n for pre in prefixes))
    return total, trainable, new


def parameters_block(label: str, named: Sequence[tuple[str, nn.Parameter]], *, note: str = "",
                     new_prefixes: Sequence[str] = NEW_PREFIXES) -> Block:
    """A block that counts the ``(name, parameter)`` pairs ``named`` (a shared parameter once)."""
    seen, unique = set(), []
    for name, p in named:
        if id(p) not in seen:
            seen.add(id(p))
            unique.append((name, p))
    return Block(label, *_stats(unique, new_prefixes), note=note)


def module_block(label: str, module: nn.Module | Sequence[nn.Module], *, note: str = "",
                 new_prefixes: Sequence[str] = NEW_PREFIXES) -> Block:
    """A block that counts ``module``'s parameters (or several modules', shared ones once)."""
    modules = [module] if isinstance(module, nn.Module) else list(module)
    return parameters_block(label, [np_ for m in modules for np_ in m.named_parameters()], note=note,
                            new_prefixes=new_prefixes)


def parameter_blocks(module: nn.Module, *, depth: int = 1, skip: Sequence[str] = (),
                     new_prefixes: Sequence[str] = NEW_PREFIXES) -> list[Block]:
    """One block per group of ``module``'s parameters, grouped by the first ``depth`` parts of their names.

    ``attn.qkv.base_layer.weight`` and ``attn.qkv.lora_A.default.weight`` both fall in ``attn.qkv`` at
    ``depth=2``; groups come in order of first appearance. Groups whose name starts with one of
    ``skip`` (e.g. ``"norm"``) are left out.
    """
    if depth < 1:
        raise ValueError(f"parameter_blocks: depth must be >= 1, got {depth}")
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, p in module.named_parameters():
        parts = name.split(".")
        key = ".".join(parts[:min(depth, len(parts) - 1)] or parts)
        groups.setdefault(key, []).append((name, p))
    blocks = []
    for key, named in groups.items():
        if not any(key.startswith(s) for s in skip):
            blocks.append(Block(key, *_stats(named, new_prefixes)))
    return blocks


# ---------------------------------------------------------------------------------------------
# the diagram
# ---------------------------------------------------------------------------------------------

@dataclass
class Row:
    """A row of blocks (``None`` leaves a column empty); ``chain`` draws arrows between neighbours."""

    label: str
    blocks: list[Block | None]
    chain: bool = True


@dataclass
class Diagram:
    """Rows of blocks, links ``((row, col), (row, col))`` between blocks, and ``spans`` ``(row, col0, col1, text)``."""

    rows: list[Row]
    links: list[tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    spans: list[tuple[int, int, int, str]] = field(default_factory=list)
    title: str = ""

    def __post_init__(self) -> None:
        for a, b in self.links:
            self.block(*a), self.block(*b)  # noqa: B018 (fails loudly on a bad reference)
        for r, c0, c1, _ in self.spans:
            if not (0 <= r < len(self.rows) and 0 <= c0 <= c1 < len(self.rows[r].blocks)):
                raise ValueError(f"Diagram: span ({r}, {c0}, {c1}) is outside the rows")

    def block(self, row: int, col: int) -> Block:
        """The block at ``(row, col)``; ``ValueError`` if there is none."""
        if not 0 <= row < len(self.rows) or not 0 <= col < len(self.rows[row].blocks) \
                or self.rows[row].blocks[col] is None:
            raise ValueError(f"Diagram: no block at ({row}, {col})")
        return self.rows[row].blocks[col]

    def blocks(self) -> list[Block]:
        """Every block, row by row."""
        return [b for row in self.rows for b in row.blocks if b is not None]

    def find(self, label: str) -> Block:
        """The first block whose label is ``label``."""
        for b in self.blocks():
            if b.label == label:
                return b
        raise KeyError(f"no block labelled {label!r}; labels: {[b.label for b in self.blocks()]}")

    # -----------------------------------------------------------------------------------------
    # drawing
    # -----------------------------------------------------------------------------------------

    def _xy(self, row: int, col: int) -> tuple[float, float]:
        return col * (_W + _GAP), -row * (_H + _VGAP)

    def draw(self, *, width_per_column: float = 1.9, fontsize: float = 7.0) -> Figure:
        """Draw the diagram; returns the figure (nothing is shown or saved)."""
        n_cols = max(len(r.blocks) for r in self.rows)
        fig, ax = plt.subplots(figsize=(1.6 + width_per_column * n_cols, 0.4 + 1.45 * len(self.rows)))
        for r, row in enumerate(self.rows):
            x0, y0 = self._xy(r, 0)
            ax.text(x0 - 0.25, y0 + _H / 2, row.label, ha="right", va="center", fontsize=fontsize + 1, style="italic")
            previous = None
            for c, block in enumerate(row.blocks):
                if block is None:
                    continue
                x, y = self._xy(r, c)
                edge = _LOSS_EDGE if block.kind == "loss" else _NEW_EDGE if block.new else "black"
                ax.add_patch(FancyBboxPatch((x, y), _W, _H, boxstyle="round,pad=0.02,rounding_size=0.12",
                                            facecolor=_FILL[block.state], edgecolor=edge,
                                            linewidth=2.2 if edge != "black" else 0.8,
                                            linestyle="--" if block.kind == "data" else "-"))
                ax.text(x + _W / 2, y + _H / 2, block.text(), ha="center", va="center", fontsize=fontsize)
                if row.chain and previous is not None:
                    px, _ = self._xy(r, previous)
                    ax.annotate("", xy=(x, y + _H / 2), xytext=(px + _W, y + _H / 2),
                                arrowprops=dict(arrowstyle="->", lw=1))
                previous = c
        for (r0, c0), (r1, c1) in self.links:
            (x0, y0), (x1, y1) = self._xy(r0, c0), self._xy(r1, c1)
            start = (x0 + _W / 2, y0 + (_H if r1 < r0 else 0 if r1 > r0 else _H / 2))
            end = (x1 + _W / 2, y1 + (0 if r1 < r0 else _H if r1 > r0 else _H / 2))
            ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", lw=1, color="#555555",
                                                                  connectionstyle="arc3,rad=0.0"))
        for r, c0, c1, text in self.spans:
            (xa, y), (xb, _) = self._xy(r, c0), self._xy(r, c1)
            ax.annotate("", xy=(xa, y - 0.12), xytext=(xb + _W, y - 0.12),
                        arrowprops=dict(arrowstyle="|-|,widthA=0.25,widthB=0.25", lw=0.8, color="#0072B2"))
            ax.text((xa + xb + _W) / 2, y - 0.3, text, ha="center", va="top", fontsize=fontsize, color="#0072B2")
        ax.set_xlim(-1.7, n_cols * (_W + _GAP))
        ax.set_ylim(-(len(self.rows) - 1) * (_H + _VGAP) - 0.8, _H + 0.25)
        ax.axis("off")
        ax.legend(handles=self._legend(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=6, fontsize=fontsize,
                  frameon=False)
        if self.title:
            ax.set_title(self.title, fontsize=fontsize + 3)
        fig.tight_layout()
        return fig

    def _legend(self) -> list[Patch]:
        states = {b.state for b in self.blocks()}
        entries = [("frozen", "frozen"), ("trains", "trains"), ("partial", "partly trains"), ("op", "operation"),
                   ("data", "data")]
        handles = [Patch(facecolor=_FILL[s], edgecolor="black", label=text) for s, text in entries if s in states]
        if any(b.new for b in self.blocks()):
            handles.append(Patch(facecolor="white", edgecolor=_NEW_EDGE, linewidth=2, label="added by the method"))
        if "loss" in states:
            handles.append(Patch(facecolor="white", edgecolor=_LOSS_EDGE, linewidth=2, label="loss"))
        return handles
