"""Figure helpers for the notebooks and slides: overlays, sample grids, colour statistics,
embeddings, result heatmaps and severity strips.

Every helper builds its figure with pyplot, returns the :class:`~matplotlib.figure.Figure` and
never calls ``plt.show()``, so it works the same in a notebook, in a script and headless
(matplotlib picks the Agg backend when there is no display). Helpers that draw one panel take
an ``ax`` to draw into someone else's figure. ``save_path`` saves through :func:`save_figure`,
which writes atomically (temporary file, then ``os.replace``).

Colours are fixed across the kit: truth is solid and prediction dashed; disc yellow, cup sky
blue, prompt boxes white (Okabe-Ito colours, which stay apart for colour-blind readers and on
the orange fundus); each domain keeps its colour across figures (seaborn's ``colorblind``
palette in order of appearance).

Sections: helpers -> single-image panels -> dataset figures -> result figures.
The result figures that take a ``result`` need only its ``rows``, ``samples``, ``pred_disc`` and
``pred_cup`` (a :class:`mfmda_lib.evaluation.zero_shot.ZeroShotResult` has them).
"""
from ._common import BOX_COLOUR, CUP_COLOUR, DISC_COLOUR, hstack_images, save_figure, save_palette_png
from .images import overlay, sample_grid, colour_histograms, embedding_scatter, severity_strip
from .results import metric_table_heatmap, failure_gallery, tta_settings_figure, tta_stream_figure, zero_shot_figure, method_domain_bars

__all__ = [
    "overlay",
    "sample_grid",
    "colour_histograms",
    "embedding_scatter",
    "metric_table_heatmap",
    "severity_strip",
    "save_figure",
    "save_palette_png",
    "hstack_images",
    "failure_gallery",
    "zero_shot_figure",
    "tta_settings_figure",
    "tta_stream_figure",
    "method_domain_bars",
    "DISC_COLOUR",
    "CUP_COLOUR",
    "BOX_COLOUR",
]
