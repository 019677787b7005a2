"""The rows of the stage-2 comparison: :class:`Method` (what a method pairs with the source, which steps it runs,
what it changes), the registry :data:`METHODS` and its groups, and the base :class:`Stage2Config` of a profile."""

from __future__ import annotations

from dataclasses import dataclass

from ..profiles import Profile
from .rein import ReinConfig
from .stage2 import Stage2Config

__all__ = [
    "Method", "METHODS", "BASELINES", "UNSUPERVISED_BASELINES", "ABLATIONS", "HEADLINE", "DEFAULT_METHODS",
    "PIPELINE_METHODS", "stage2_config", "stage2_seeds",
]


@dataclass(frozen=True)
class Method:
    """One row of the comparison.

    Attributes:
        name: key in :data:`METHODS`.
        label: what it is, in a few words.
        images: what is paired with each source image: ``"none"``, ``"stage1"`` (the translations
            passed to :func:`run_stage2`), ``"fda"``, ``"histogram"`` or ``"jitter"``; ``"oracle"``:
            no pairing, the model trains on the target's own labelled images instead of the source.
        steps: which of the three steps run.
        changes: :class:`Stage2Config` fields changed from the profile's base config
            (``align_taps="last"`` means the deepest tap).
        kind: ``"train"``, ``"tent"`` (test-time adaptation of ``source_only``) or ``"reference"``.
        warm_up: start from the kit's warm-up of the head (``False``: from scratch, as the authors).
    """

    name: str
    label: str
    images: str = "none"
    steps: tuple[str, ...] = ("source",)
    changes: tuple[tuple[str, object], ...] = ()
    kind: str = "train"
    warm_up: bool = True

    @property
    def per_target(self) -> bool:
        """Whether a model is trained for each target (it sees target-derived images)."""
        return self.images in ("stage1", "fda", "histogram", "oracle")

    def config(self, base: Stage2Config) -> Stage2Config:
        """The method's :class:`Stage2Config`."""
        changes = dict(self.changes)
        if changes.get("align_taps") == "last":
            changes["align_taps"] = (base.taps[-1],)
        return base.replace(steps=self.steps, **changes)


_ALL = ("align", "source", "translated")


_PAIR = ("source", "translated")


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("source_only", "trained on the source only"),
    Method("fda", "source + FDA to the K targets (L = 0.01)", "fda", _PAIR),
    Method("histogram_matching", "source + histogram matching to the K targets", "histogram", _PAIR),
    Method("tent", "source_only + Tent at test time", kind="tent"),
    Method("sam_decoder_adapter", "notebook 05's decoder adapter, box-prompted (reference)", kind="reference"),
    Method("translation_only", "source + translations, no alignment", "stage1", _PAIR),
    Method("alignment_only", "alignment to a photometric jitter, no translation", "jitter", _ALL),
    Method("mfmda", "MFM-DA: translations + hierarchical alignment", "stage1", _ALL),
    Method("mfmda_no_rein", "ablation: no Rein tokens (head only)", "stage1", _PAIR, (("use_rein", False),)),
    Method("mfmda_last_level", "ablation: deepest level only (no pyramid)", "stage1", _ALL,
           (("head_levels", "last"), ("align_taps", "last"))),
    Method("mfmda_align_last", "ablation: align the deepest level only", "stage1", _ALL, (("align_taps", "last"),)),
    Method("mfmda_adamw", "ablation: AdamW (lr 1e-2) in steps 2-3, the kit's earlier optimiser", "stage1", _ALL,
           (("optimizer", "adamw"), ("lr", 1e-2))),
    Method("mfmda_levels", "ablation: tokens on the pyramid levels only (not after every block)", "stage1", _ALL,
           (("rein_placement", "levels"),)),
    Method("mfmda_no_warmup", "ablation: no warm-up of the head (the authors' from-scratch start, in this budget)",
           "stage1", _ALL, warm_up=False),
    Method("oracle", "trained on the target's own labelled images (upper bound, not UDA)", "oracle"),
)}


BASELINES = ("source_only", "fda", "histogram_matching", "tent", "sam_decoder_adapter", "translation_only",
             "alignment_only")


#: the baselines MFM-DA must beat: unsupervised, not the box-prompted reference row
UNSUPERVISED_BASELINES = tuple(m for m in BASELINES if METHODS[m].kind != "reference")


ABLATIONS = ("mfmda_no_rein", "mfmda_last_level", "mfmda_align_last", "mfmda_adamw", "mfmda_levels",
             "mfmda_no_warmup")


#: the comparison every verdict rests on: trained with every seed of the profile (ablations: the first seed)
HEADLINE = ("source_only", *[m for m in UNSUPERVISED_BASELINES if m != "source_only"], "mfmda", "oracle")


DEFAULT_METHODS = (*BASELINES, "mfmda", "oracle", *ABLATIONS)


#: what ``mfmda run`` trains on the benchmark: the headline comparison and the (free) reference row; the
#: ablations are notebook 09's, on one target
PIPELINE_METHODS = (*HEADLINE, "sam_decoder_adapter")


def stage2_config(profile: Profile, seed: int | None = None) -> Stage2Config:
    """The base :class:`Stage2Config` of a profile (every method changes only what it names).

    Args:
        seed: seeds the tokens, the head and the pair order (default ``profile.seed``).
    """
    seed = profile.seed if seed is None else seed
    return Stage2Config(taps=tuple(profile.stage2_taps), rein_from=profile.stage2_rein_from,
                        rein_placement=profile.stage2_rein_placement, rein=ReinConfig(seed=seed),
                        epochs=profile.stage2_epochs, batch_size=profile.stage2_batch_size, seed=seed)


def stage2_seeds(profile: Profile) -> list[int]:
    """The seeds of the headline comparison: ``profile.seed``, ``profile.seed + 1``, ... (``stage2_seeds`` of them)."""
    return [profile.seed + i for i in range(profile.stage2_seeds)]
