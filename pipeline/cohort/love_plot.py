"""The love plot (cobalt's `love.plot(var.order = "unadjusted", stats = c("m", "v"))`): for every
sample, the absolute standardised mean difference of each covariate before and after matching (top
row) and the variance ratio of each continuous covariate (bottom row, log scale, with the usual
0.5-2 band). Covariates are ordered by their unadjusted |SMD| in the first sample (the whole study),
largest at the top, as cobalt orders them. A point after matching above the balance threshold is
drawn as a filled red triangle, and a sample that misses the threshold says so in its title with the
number of specifications the ladder tried. Each title is the sample's name exactly as the tables
write it (`site=<site>`) with its matched numbers (disclosure-controlled: the plot is released).

Written as a PNG artefact of the release (`love_plot.png`), drawn headless (Agg) and without
metadata that changes between runs, so the same balance table always gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

SMD_THRESHOLD = 0.1
VARIANCE_RATIO_BAND = (0.5, 2.0)
VR_TICKS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _values(rows: pl.DataFrame, column: str, absolute: bool = True) -> list[float]:
    """Values (absolute for SMDs), NaN (not drawn) where undefined (an arm with no matched weight)."""
    c = rows.get_column(column)
    return (c.abs() if absolute else c).fill_null(float("nan")).to_list()


def covariate_order(balance: pl.DataFrame, covariates: tuple[str, ...]) -> list[str]:
    """Covariates present, by unadjusted |SMD| in the first sample, largest first; ties (and covariates
    absent from the first sample) in the given order."""
    present = set(balance.get_column("covariate").to_list())
    names = [c for c in covariates if c in present]
    if not balance.height:
        return names
    first = balance.get_column("sample").item(0)
    before = dict(balance.filter(pl.col("sample") == first).select("covariate", pl.col("smd_before").abs().fill_null(0.0)).iter_rows())
    return sorted(names, key=lambda c: (-before.get(c, -1.0), names.index(c)))


def _title(sample: str, facts: dict[str, Any] | None) -> str:
    if not facts:
        return sample
    shown = lambda n: "1-7" if n is None else f"{n:,}"  # noqa: E731 (disclosure-controlled: None is 1-7)
    text = f"{sample}\nmatched {shown(facts['matched_mdt'])} MDT : {shown(facts['matched_comparators'])} comp."
    if not facts["balanced"]:
        text += f"\nNOT BALANCED after {facts['attempts']} attempt{'s' if facts['attempts'] != 1 else ''}"
    return text


def _rows(ax: Any, rows: int) -> None:
    """One covariate per row on every panel: the same y range, and a light line along each row.

    Drawn as one collection per panel, not as the y axis's grid: only the first column labels the
    rows, and ticks (each with its grid line and labels) on all 14 panels of a 7-sample plot were
    about a quarter of its time.
    """
    ax.set_ylim(-0.6, rows - 0.4)
    ax.hlines(range(rows), 0, 1, transform=ax.get_yaxis_transform(), colors="#eeeeee", linewidth=0.5, zorder=0)


def draw_love_plot(
    balance: pl.DataFrame,
    covariates: tuple[str, ...],
    path: Path,
    facts: dict[str, dict[str, Any]] | None = None,
    threshold: float = SMD_THRESHOLD,
) -> Path:
    """Two rows of panels (|SMD|; variance ratio), one column per sample in `balance` (in order of
    appearance). `facts[sample]` gives matched_mdt, matched_comparators (controlled), balanced, attempts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    facts = facts or {}
    samples = list(dict.fromkeys(balance.get_column("sample").to_list()))
    names = covariate_order(balance, covariates)
    y = {c: len(names) - 1 - i for i, c in enumerate(names)}  # first covariate at the top
    n = max(len(samples), 1)
    fig, axes = plt.subplots(
        2, n, figsize=(2.9 * n + 3.2, 2 * (0.26 * len(names) + 1.4) + 0.8), squeeze=False,
        gridspec_kw={"hspace": 0.3, "wspace": 0.12},
    )  # fmt: skip
    top = max(2 * threshold, float(balance.select(pl.max_horizontal(pl.col("smd_before").abs(), pl.col("smd_after").abs()).max()).item() or 0))
    any_over = False
    for k, sample in enumerate(samples):
        rows = balance.filter(pl.col("sample") == sample)
        ys = [y[c] for c in rows.get_column("covariate").to_list()]
        before, after = _values(rows, "smd_before"), _values(rows, "smd_after")
        over = [a > threshold for a in after]
        any_over |= any(over)
        ax = axes[0][k]
        ax.axvline(threshold, color="grey", linestyle="--", linewidth=0.8)
        ax.scatter(before, ys, facecolors="none", edgecolors="#b2182b", s=22)
        ax.scatter([a for a, o in zip(after, over, strict=True) if not o], [v for v, o in zip(ys, over, strict=True) if not o],
                   color="#2166ac", s=22)  # fmt: skip
        if any(over):
            ax.scatter([a for a, o in zip(after, over, strict=True) if o], [v for v, o in zip(ys, over, strict=True) if o],
                       color="#d7301f", marker="^", s=46)  # fmt: skip
        fact = facts.get(sample)
        unbalanced = fact is not None and not fact["balanced"]
        ax.set_title(_title(sample, fact), fontsize=8.5, color="#b2182b" if unbalanced else "black", fontweight="bold" if unbalanced else "normal")
        ax.set_xlim(0, top * 1.05)
        ax.tick_params(labelsize=8)
        _rows(ax, len(names))

        vr = rows.filter(pl.col("variance_ratio_before").is_not_null() | pl.col("variance_ratio_after").is_not_null())
        vys = [y[c] for c in vr.get_column("covariate").to_list()]
        bx = axes[1][k]
        bx.axvspan(*VARIANCE_RATIO_BAND, color="#f0f0f0", zorder=0)
        bx.axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
        bx.scatter(_values(vr, "variance_ratio_before", False), vys, facecolors="none", edgecolors="#b2182b", s=22)
        bx.scatter(_values(vr, "variance_ratio_after", False), vys, color="#2166ac", s=22)
        bx.set_xscale("log")
        bx.set_xlim(0.25, 4)
        bx.xaxis.set_major_locator(FixedLocator(VR_TICKS))
        bx.xaxis.set_major_formatter(FixedFormatter([f"{t:g}" for t in VR_TICKS]))
        bx.xaxis.set_minor_locator(NullLocator())
        bx.set_title(sample, fontsize=8.5)
        bx.tick_params(labelsize=8)
        _rows(bx, len(names))
    for row in axes:
        row[0].set_yticks(range(len(names)), list(reversed(names)))
        for ax in row[1:]:
            ax.yaxis.set_major_locator(NullLocator())
    # One legend, on the first panel, for the markers of every panel: the triangle may be drawn
    # only in another sample's panel. (A scatter's s is its marker's area in points squared, a
    # line's markersize its width in points.)
    marks = [
        Line2D([], [], linestyle="none", marker="o", markersize=4.7, markerfacecolor="none", markeredgecolor="#b2182b", label="before"),
        Line2D([], [], linestyle="none", marker="o", markersize=4.7, color="#2166ac", label="after"),
    ]
    if any_over:
        marks.append(Line2D([], [], linestyle="none", marker="^", markersize=6.8, color="#d7301f", label=f"after, above {threshold:g}"))
    axes[0][0].legend(handles=marks, fontsize=7.5, loc="lower right")
    axes[0][n // 2].set_xlabel(f"absolute standardised mean difference (threshold {threshold:g})", fontsize=9)
    axes[1][n // 2].set_xlabel("variance ratio, MDT / comparators (continuous covariates; 0.5-2 shaded)", fontsize=9)
    fig.suptitle("Covariate balance before and after matching, by sample (ordered by the whole study's unadjusted |SMD|)", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    # format given, not guessed from the name: the plot is written to a temporary name first.
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
