"""The love plot (cobalt's `love.plot`): absolute standardised mean differences of every covariate
before and after matching, one panel per sample, with the 0.1 threshold. Written as a PNG artefact
of the release (`love_plot.png`), drawn headless (Agg) and without metadata that changes between
runs, so the same balance table always gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

SMD_THRESHOLD = 0.1


def _abs(rows: pl.DataFrame, column: str) -> list[float]:
    """Absolute values, NaN (not drawn) where the SMD is undefined (an arm with no matched weight)."""
    return rows.get_column(column).abs().fill_null(float("nan")).to_list()


def draw_love_plot(balance: pl.DataFrame, covariates: tuple[str, ...], path: Path) -> Path:
    """One panel per sample in `balance` (in order of appearance), covariates in the given order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = list(dict.fromkeys(balance.get_column("sample").to_list()))
    names = [c for c in covariates if c in set(balance.get_column("covariate").to_list())]
    y = {c: len(names) - 1 - i for i, c in enumerate(names)}  # first covariate at the top
    n = max(len(samples), 1)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n + 2.6, 0.28 * len(names) + 1.6), sharey=True, squeeze=False)
    top = max(0.2, float(balance.select(pl.max_horizontal(pl.col("smd_before").abs(), pl.col("smd_after").abs()).max()).item() or 0))
    for ax, sample in zip(axes[0], samples, strict=False):
        rows = balance.filter(pl.col("sample") == sample)
        ys = [y[c] for c in rows.get_column("covariate").to_list()]
        ax.axvline(SMD_THRESHOLD, color="grey", linestyle="--", linewidth=0.8)
        ax.scatter(_abs(rows, "smd_before"), ys, facecolors="none", edgecolors="#b2182b", s=18, label="before")
        ax.scatter(_abs(rows, "smd_after"), ys, color="#2166ac", s=18, label="after")
        ax.set_title(sample.replace("operating_model=", "model: ").replace("site=", "site: "), fontsize=8)
        ax.set_xlim(0, top * 1.05)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", color="#eeeeee", linewidth=0.5)
    axes[0][0].set_yticks(range(len(names)), list(reversed(names)))
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.supxlabel("absolute standardised mean difference", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # format given, not guessed from the name: the plot is written to a temporary name first.
    fig.savefig(path, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path
