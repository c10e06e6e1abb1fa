"""Drawing only: matplotlib figures (Agg backend, headless) from numbers computed elsewhere
(:mod:`utils.diagnostics`, via :mod:`utils.figures`). Nothing here computes a metric.

Every figure has labelled axes with units, a title naming dataset, method, bits and checkpoint,
and is sized for a paper: one column is ``COLUMN`` inches wide, a full text width ``PAGE``
(two-column conference templates: 3.3 and 6.9 in), fonts 7-8 pt, saved at ``DPI``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display needed, never opens a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.checkpoint import write_bytes  # noqa: E402

COLUMN = 3.4  # inches, one column of a two-column paper
PAGE = 7.0  # inches, full text width
DPI = 200
STYLE = {
    "font.size": 7.5,
    "axes.titlesize": 7.5,
    "axes.labelsize": 7.5,
    "legend.fontsize": 6.5,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "figure.titlesize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.2,
    "lines.markersize": 3,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
}
SAME_COLOR, DIFF_COLOR = "#1f77b4", "#d62728"
matplotlib.rcParams.update(STYLE)  # this module is the project's only matplotlib user


def figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **kwargs):
    """A figure of exactly width x height inches (its PNG: width*DPI x height*DPI pixels)."""
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(width, height),
        dpi=DPI,
        layout="constrained",
        squeeze=False,
        **kwargs,
    )
    return fig, axes


def save(fig, path: str | Path) -> Path:
    """Write the figure as PNG atomically (no half-written file) and close it."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)  # no bbox_inches="tight": the size is fixed
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
    return path


def _legend(ax, **kwargs) -> None:
    ax.legend(fontsize=STYLE["legend.fontsize"], frameon=False, **kwargs)


def pr_curve(curves: Sequence[tuple[str, dict]], title: str):
    """Precision against recall within Hamming radius r = 0..K, one line per run.

    curves: [(label, {"radius", "precision", "recall"}), ...]. Markers at every radius; the
    radii 0, 2 and K are annotated when there is one curve.
    """
    fig, axes = figure(COLUMN, 2.6)
    ax = axes[0, 0]
    for label, c in curves:
        ax.plot(c["recall"], c["precision"], marker="o", label=label)
    label, first = curves[0]
    nbit = first["radius"][-1]
    for r, offset in ((0, (5, -9)), (2, (5, 3)), (nbit, (-4, 10))):
        if len(curves) == 1 and r < len(first["radius"]):
            ax.annotate(
                f"r={r}",
                (first["recall"][r], first["precision"][r]),
                textcoords="offset points",
                xytext=offset,
                fontsize=6,
                ha="right" if r == nbit else "left",
            )
    ax.set(
        xlabel="recall within Hamming radius r",
        ylabel="precision within Hamming radius r",
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
    )
    ax.set_title(title)
    if len(curves) > 1:
        _legend(ax)
    return fig


def precision_at_k(curves: Sequence[tuple[str, dict]], title: str):
    """P@k against the number of retrieved items k, one line per run ({"k", "precision"})."""
    fig, axes = figure(COLUMN, 2.6)
    ax = axes[0, 0]
    for label, c in curves:
        ax.plot(c["k"], c["precision"], marker="o", label=label)
    ax.set(xlabel="number of retrieved items k", ylabel="precision@k", ylim=(-0.02, 1.02))
    ax.set_title(title)
    if len(curves) > 1:
        _legend(ax)
    return fig


def distance_histograms(panels: Sequence[dict], title: str, per_row: int = 4):
    """Same-class vs different-class Hamming-distance distributions, one panel per run.

    panels: [{"label", "same", "diff", "overlap"}, ...] with (K + 1,) counts; each
    distribution is normalised to sum 1 (the y axis is the fraction of that kind of pair);
    the panels share the y axis.
    """
    n = len(panels)
    ncols = min(n, per_row)
    nrows = -(-n // ncols)
    width = COLUMN if n == 1 else PAGE
    # one y scale for all panels: a collapsed distribution shows as a taller, narrower peak
    fig, axes = figure(width, 2.4 if n == 1 else 1.75 * nrows + 0.35, nrows, ncols, sharey=True)
    for i, panel in enumerate(panels):
        ax = axes[i // ncols, i % ncols]
        same = np.asarray(panel["same"], dtype=float)
        diff = np.asarray(panel["diff"], dtype=float)
        d = np.arange(len(same))
        for counts, color, name in (
            (same, SAME_COLOR, "same class"),
            (diff, DIFF_COLOR, "different class"),
        ):
            frac = counts / counts.sum() if counts.sum() else counts
            ax.fill_between(d, frac, step="mid", color=color, alpha=0.35, linewidth=0)
            ax.step(d, frac, where="mid", color=color, linewidth=0.9, label=name)
        ax.set(xlabel="Hamming distance (bits)", xlim=(0, len(same) - 1))
        if i % ncols == 0:
            ax.set_ylabel("fraction of pairs")
        ax.set_title(f"{panel['label']}\noverlap {panel['overlap']:.2f}")
    for j in range(n, nrows * ncols):
        axes[j // ncols, j % ncols].axis("off")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="outside lower center",
        ncols=2,
        frameon=False,
        fontsize=STYLE["legend.fontsize"],
    )
    fig.suptitle(title, fontsize=STYLE["figure.titlesize"])
    return fig


def training_curves(runs: Sequence[tuple[str, dict]], title: str):
    """Left: every loss term against epoch; right: mAP (query, tie-aware, validation).

    runs: [(label, {"loss": {term: (epochs, values)}, "map": {name: (epochs, values)}}), ...];
    with several runs, line labels are prefixed with the run label.
    """
    fig, axes = figure(PAGE if len(runs) > 1 else COLUMN * 2, 2.9 if len(runs) > 1 else 2.4, 1, 2)
    left, right = axes[0]
    prefix = len(runs) > 1
    per_run = []  # the lines of each run, for a legend with one column per run
    for label, curves in runs:
        lines = []
        for term, (epochs, values) in curves["loss"].items():
            lines += left.plot(epochs, values, label=f"{label}: {term}" if prefix else term)
        for name, (epochs, values) in curves["map"].items():
            name = (
                f"validation {name[4:]}" if name.startswith("val_") else f"query {name}"
            ).replace("mAP_tie", "tie-aware mAP")
            lines += right.plot(
                epochs,
                np.asarray(values) * 100,
                marker="o",
                label=f"{label}: {name}" if prefix else name,
            )
        per_run.append(lines)
    left.set(xlabel="epoch", ylabel="training loss (per item, epoch mean)")
    left.set_title("loss terms")
    right.set(xlabel="epoch", ylabel="mAP (%)")
    right.set_title("mAP of the evaluations")
    for ax in (left, right):
        ax.xaxis.get_major_locator().set_params(integer=True)
        if not prefix and ax.get_legend_handles_labels()[0]:
            _legend(ax)
    if prefix:  # several runs: one legend under both panels, clear of the curves
        handles = [line for lines in per_run for line in lines]
        fig.legend(
            handles,
            [h.get_label() for h in handles],
            loc="outside lower center",
            ncols=len(runs) if len({len(x) for x in per_run}) == 1 else 3,
            frameon=False,
            fontsize=STYLE["legend.fontsize"],
        )
    fig.suptitle(title, fontsize=STYLE["figure.titlesize"])
    return fig


def retrieval_grid(
    rows: Sequence[dict],
    query_images: Sequence,
    db_images: Sequence[Sequence],
    query_names: Sequence[str],
    title: str,
):
    """One row per query: the query image, then its top-k database images framed green
    (relevant) or red (not relevant), with the Hamming distance under each.

    rows: retrieval_grid_rows(...) output; query_images: one HxW or HxWx3 uint8 array per row;
    db_images: per row, the arrays of its retrieved items.
    """
    n_rows, top = len(rows), len(rows[0]["retrieved"])
    cell = PAGE / (top + 1.6)
    fig, axes = figure(PAGE, cell * n_rows + 0.45, n_rows, top + 1)
    fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.02, hspace=0.02)
    for i, row in enumerate(rows):
        cells = [(query_images[i], None, None)] + [
            (img, ok, dist) for img, ok, dist in zip(db_images[i], row["correct"], row["distance"])
        ]
        for j, (img, ok, dist) in enumerate(cells):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray" if np.ndim(img) == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            color = "black" if ok is None else ("#2ca02c" if ok else "#d62728")
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(color)
                spine.set_linewidth(1.0 if ok is None else 2.2)
            if j == 0:
                ax.set_ylabel(query_names[i], fontsize=6, rotation=0, ha="right", va="center")
            else:
                ax.set_xlabel(
                    f"{'✓' if ok else '✗'} d={dist}", fontsize=5.5, color=color, labelpad=1
                )
        if i == 0:
            axes[0, 0].set_title("query", fontsize=6.5)
            for j in range(1, top + 1):
                axes[0, j].set_title(f"#{j}", fontsize=6.5)
    fig.suptitle(
        title + " — green: same class, red: wrong; d = Hamming distance (bits)",
        fontsize=STYLE["figure.titlesize"],
    )
    return fig


def map_vs_bits(data: dict[str, dict], title: str, metric: str):
    """mAP against code length per method, error bars = sample std over seeds.

    data: utils.diagnostics.map_by_bits output; metric: the metric's name (e.g. mAP@1000).
    """
    fig, axes = figure(COLUMN, 2.6)
    ax = axes[0, 0]
    for method, d in data.items():
        ax.errorbar(
            d["nbit"],
            np.asarray(d["mean"]) * 100,
            yerr=np.asarray(d["std"]) * 100,
            marker="o",
            capsize=2.5,
            label=method,
        )
    bits = sorted({b for d in data.values() for b in d["nbit"]})
    ax.set_xscale("log", base=2)
    ax.set_xticks(bits, [str(b) for b in bits])
    ax.minorticks_off()
    ax.set(xlabel="code length (bits)", ylabel=f"{metric} (%)")
    ax.set_title(title)
    _legend(ax, title="mean ± std over seeds", title_fontsize=STYLE["legend.fontsize"])
    return fig
