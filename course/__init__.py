"""Course-building tools, kept out of the installed package (``mfmda_lib``): they build the course's material
from the repository and never run inside a notebook.

- :mod:`course.student`: the student edition of every notebook (exercise stubs, no answer key);
- :mod:`course.slides`: the seminar decks (``slides/decks/*.md``) as self-contained HTML;
- :mod:`course.deck_sources`: what a deck may pull in (results tables and figures) and where it is found;
- :mod:`course.deck_figures`: the decks' figures redrawn from the saved results;
- :mod:`course.publish`: the kit's public URL copied into every badge and install cell.

Run them from the repository root as modules, e.g. ``python -m course.student`` (``make student``).
"""
