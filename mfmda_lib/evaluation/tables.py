"""The per-domain results table: mean ± std of each metric per method and domain, with the mean over domains
(:func:`per_domain_table`), and the same table as Markdown or text (:func:`format_table`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["per_domain_table", "format_table", "MEAN_ROW", "EMPTY_SUFFIX"]

#: Suffix of the per-image flag "this structure's predicted mask is empty" (``disc_empty``, ``cup_empty``).
EMPTY_SUFFIX = "_empty"
#: Name of the row that :func:`per_domain_table` adds after the domains (macro average).
MEAN_ROW = "mean"


def _check_rows(rows: list[dict], metrics: list[str]) -> None:
    """``ValueError`` naming the first row or argument :func:`per_domain_table` cannot use."""
    if not rows:
        raise ValueError("per_domain_table: rows is empty; score some images first")
    if not metrics:
        raise ValueError("per_domain_table: metrics is empty; name at least one key, e.g. 'disc_dice'")
    for i, row in enumerate(rows):
        missing = [k for k in ("domain", *metrics) if k not in row]
        if missing:
            raise ValueError(f"per_domain_table: row {i} lacks {missing}; it has {sorted(row)}")
        if row["domain"] == MEAN_ROW:
            raise ValueError(f"per_domain_table: row {i} uses the reserved domain name {MEAN_ROW!r}")


def _domain_order(seen: list[str], domain_order: Sequence[str] | None) -> list[str]:
    """The domain rows' order: ``domain_order`` (which must list exactly the ``seen`` domains), else ``seen``."""
    if domain_order is None:
        return seen
    order = list(domain_order)
    unlisted = [d for d in seen if d not in order]
    absent = [d for d in order if d not in seen]
    if unlisted or absent:
        raise ValueError(
            f"per_domain_table: domain_order {order} does not match the rows' domains {seen} "
            f"(in rows but not listed: {unlisted}; listed but no rows: {absent})"
        )
    return order


def _summary_row(group: pd.DataFrame, n: int, metrics: Sequence[str], empties: Sequence[str], ddof: int) -> dict:
    """One table row: ``n``, each metric's mean and std over ``group``'s rows, and the empty-prediction counts."""
    rec = {"n": n}
    for m in metrics:
        rec[m] = group[m].mean()
        rec[f"{m}_std"] = group[m].std(ddof=ddof)
    rec.update({e: int(group[e].sum()) for e in empties})
    return rec


def per_domain_table(rows: list[dict], metrics: Sequence[str] = ("disc_dice", "cup_dice"),
                     domain_order: Sequence[str] | None = None, *, ddof: int = 0) -> pd.DataFrame:
    """Mean and standard deviation of each metric per domain (and per method), plus a mean row.

    Args:
        rows: one dict per image with a ``"domain"`` key, the ``metrics`` keys and optionally
            ``"method"``; extra keys are ignored.
        metrics: which keys to summarise.
        domain_order: order of the domain rows; default is first appearance in ``rows``.
            Every domain in ``rows`` must be listed. A method without rows for a listed domain
            simply has no row for it (and its mean row averages only the domains it has).
        ddof: delta degrees of freedom of the std (0: ``np.std``'s convention, which also gives
            0 rather than ``nan`` for a single image; 1: the sample std).

    Returns:
        A DataFrame indexed by ``domain`` (or by ``(method, domain)`` when the rows carry a
        ``"method"``), with columns ``n`` (number of rows) and, for each metric ``m``, ``m`` (mean)
        and ``m_std``. After each method's domains comes a row named ``"mean"``: the average of
        the domain means (every domain weighs the same however many images it has), with ``m_std``
        the spread of the domain means across domains and ``n`` the total count. ``nan`` values
        are skipped. When the rows carry ``<s>_empty`` flags (:func:`segmentation_scores`) for a
        structure ``s`` of the metrics (``disc_hd95`` -> ``disc``), a column ``<s>_empty`` counts the
        empty predictions (the mean row: over every domain), right after that structure's metrics.
    """
    metrics = list(metrics)
    _check_rows(rows, metrics)
    frame = pd.DataFrame(rows)
    frame[metrics] = frame[metrics].astype(float)
    empties = [e for e in dict.fromkeys(_structure(m) + EMPTY_SUFFIX for m in metrics) if e in frame.columns]
    frame[empties] = frame[empties].eq(True)  # a row without the flag counts as not empty
    has_method = "method" in frame.columns
    if has_method and frame["method"].isna().any():
        raise ValueError("per_domain_table: some rows have a 'method' and some do not; give every row one")

    order = _domain_order(list(dict.fromkeys(frame["domain"])), domain_order)
    methods = list(dict.fromkeys(frame["method"])) if has_method else [None]
    records, index = [], []
    for method in methods:
        part = frame if method is None else frame[frame["method"] == method]
        domain_rows = []
        for domain in order:
            group = part[part["domain"] == domain]
            if group.empty:
                continue
            rec = _summary_row(group, len(group), metrics, empties, ddof)
            domain_rows.append(rec)
            records.append(rec)
            index.append(domain if method is None else (method, domain))
        means = pd.DataFrame(domain_rows)
        records.append(_summary_row(means, int(means["n"].sum()), metrics, empties, ddof))
        index.append(MEAN_ROW if method is None else (method, MEAN_ROW))

    columns = ["n"]
    for i, m in enumerate(metrics):
        columns += [m, f"{m}_std"]
        empty = _structure(m) + EMPTY_SUFFIX
        if empty in empties and all(_structure(k) != _structure(m) for k in metrics[i + 1:]):
            columns.append(empty)  # after the structure's last metric
    if has_method:
        idx = pd.MultiIndex.from_tuples(index, names=["method", "domain"])
    else:
        idx = pd.Index(index, name="domain")
    table = pd.DataFrame(records, index=idx, columns=columns)
    table["n"] = table["n"].astype(int)
    for e in empties:
        table[e] = table[e].astype(int)
    return table


def _structure(metric: str) -> str:
    """``"disc_hd95"`` -> ``"disc"``: the structure a metric key belongs to."""
    return metric.split("_", 1)[0]


def _is_count(column: str) -> bool:
    return column == "n" or column.endswith(EMPTY_SUFFIX)


def _table_metrics(df: pd.DataFrame) -> list[str]:
    """Value columns of a table: every column but ``n``, the ``_std`` partners and the empty counts."""
    return [c for c in df.columns if not _is_count(c) and not (c.endswith("_std") and c[:-4] in df.columns)]


def _cell(mean: float, std: float, digits: int) -> str:
    """``"0.912 ± 0.031"``; ``"n/a"`` for a missing mean; the mean alone for a missing std; words as they are."""
    if isinstance(mean, str):  # e.g. a verdict column ("better", "no difference measured")
        return mean
    if isinstance(mean, (int, np.integer)) and not isinstance(mean, bool):  # counts: seeds, images
        return str(mean)
    if pd.isna(mean):
        return "n/a"
    if pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _markdown(header: list[str], body: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table with padded columns; the first column left-aligned."""
    widths = [max(len(r[j]) for r in [header, *body]) for j in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(":" + "-" * (w + 1) if j == 0 else "-" * (w + 1) + ":"
                          for j, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def format_table(df: pd.DataFrame, digits: int = 3) -> str:
    """Render a table as Markdown: ``mean ± std`` where a column has a ``_std`` partner, else the value.

    Counts (``n`` and the ``<s>_empty`` empty-prediction counts of :func:`per_domain_table`) are
    shown as integers, each in its place among the columns.

    Uses ``DataFrame.to_markdown`` when the optional ``tabulate`` package is installed, else a
    small built-in formatter; both give a header row, an alignment row and one line per row.

    Args:
        df: the output of :func:`per_domain_table`.
        digits: decimals shown for means and stds.

    Returns:
        The table as one string (no trailing newline).
    """
    metrics = _table_metrics(df)
    if not metrics:
        raise ValueError(
            f"format_table: no value columns in {list(df.columns)} (only 'n' and '_std' columns)"
        )
    keys = list(df.index.names) if isinstance(df.index, pd.MultiIndex) else [df.index.name or "domain"]
    shown = (["n"] if "n" in df.columns else []) + [c for c in df.columns if c != "n" and (c in metrics or _is_count(c))]
    header = keys + shown
    body = []
    for key, row in df.iterrows():
        cells = [str(k) for k in (key if isinstance(key, tuple) else (key,))]
        cells += [("n/a" if pd.isna(row[c]) else str(int(row[c]))) if _is_count(c)
                  else _cell(row[c], row.get(f"{c}_std", float("nan")), digits) for c in shown]
        body.append(cells)
    try:
        import tabulate  # noqa: F401  (optional: only decides which formatter runs)
    except ImportError:
        return _markdown(header, body)
    return pd.DataFrame(body, columns=header).to_markdown(index=False, disable_numparse=True)
