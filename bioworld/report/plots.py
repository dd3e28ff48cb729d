"""Figures of a prioritisation / world-model report (matplotlib object API, no pyplot; each returns a Figure).

All functions take plain pandas / numpy inputs (the fields of
:class:`bioworld.query.PrioritizationResult`, a training history, a benchmark summary), so they
can be used on their own: ``fig = effect_bars(result.table); fig.savefig("effects.png")``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure  # figures are built without pyplot: no backend is chosen or changed
from matplotlib.patches import Rectangle

__all__ = [
    "KIND_COLORS",
    "accuracy_bars",
    "effect_bars",
    "entity_heatmap",
    "pair_synergy_matrix",
    "per_cell_distributions",
    "short_label",
    "training_curves",
]

#: Bar colours of single and paired interventions (colour-blind safe pair).
KIND_COLORS = {"single": "#1f77b4", "gene": "#1f77b4", "compound": "#2ca02c", "entity": "#7f7f7f", "pair": "#e66100"}
_WORLD_MODEL_COLOR = "#d62728"
_BASELINE_COLOR = "#8c8c8c"
#: horizontal violins / boxes (``orientation=`` from matplotlib 3.10; ``vert=`` before, now deprecated)
_HORIZONTAL: dict[str, Any] = (
    {"orientation": "horizontal"} if tuple(int(p) for p in re.findall(r"\d+", matplotlib.__version__)[:2]) >= (3, 10)
    else {"vert": False}
)


def _plain_text(fn):
    """Build the figure with matplotlib's math parser off: names are shown as written.

    Entity and intervention names come from user files; a ``$`` in one (``P$\\foo{$``) would
    otherwise be parsed as mathtext and fail (or render as math) when the figure is drawn.
    """
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context({"text.parse_math": False}):
            return fn(*args, **kwargs)

    return wrapper


def short_label(label: str, width: int = 42) -> str:
    """Shorten long entity / intervention names for axis labels.

    ``HALLMARK_`` -> ``H_``; if still longer than ``width``, ``silence:`` -> ``sil:``; then an ellipsis.
    """
    text = str(label).replace("HALLMARK_", "H_")
    if len(text) > width:
        text = text.replace("silence:", "sil:")
    return text if len(text) <= width else text[: width - 1] + "…"


@_plain_text
def _empty(message: str, figsize: tuple[float, float] = (6.0, 1.6)) -> Figure:
    fig = Figure(figsize=figsize)
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=10, color="#555555", wrap=True)
    return fig


@_plain_text
def effect_bars(table: pd.DataFrame, *, top_n: int = 20, title: str | None = None) -> Figure:
    """Mean goal score of the ``top_n`` best interventions with their intervals.

    ``table`` has columns ``intervention, kind, score, score_lo, score_hi`` (ranked best first, as
    :attr:`PrioritizationResult.table`). Horizontal bars, best at the top; error bars span
    ``[score_lo, score_hi]``; singles and pairs in different colours.
    """
    if table is None or len(table) == 0:
        return _empty("no interventions were scored")
    top = table.head(top_n).iloc[::-1]  # best at the top of a barh
    y = np.arange(len(top))
    score = top["score"].to_numpy(float)
    lo = top["score_lo"].to_numpy(float) if "score_lo" in top else score
    hi = top["score_hi"].to_numpy(float) if "score_hi" in top else score
    err = np.vstack([np.clip(score - lo, 0, None), np.clip(hi - score, 0, None)])
    kinds = top["kind"].astype(str).to_numpy() if "kind" in top else np.array(["single"] * len(top))
    colors = [KIND_COLORS.get(k, "#555555") for k in kinds]
    fig = Figure(figsize=(9.0, 0.32 * len(top) + 1.4))
    ax = fig.subplots()
    ax.barh(y, score, xerr=err, color=colors, ecolor="#222222", capsize=2, height=0.7)
    ax.set_yticks(y)
    ax.set_yticklabels([short_label(s, 60) for s in top["intervention"]], fontsize=8)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("goal score (mean over cells; bar = 95% interval)")
    handles = [Rectangle((0, 0), 1, 1, color=c) for k, c in KIND_COLORS.items() if k in set(kinds)]
    labels = [k for k in KIND_COLORS if k in set(kinds)]
    if handles:
        ax.legend(handles, labels, loc="lower right", fontsize=8, frameon=False)
    ax.set_title(title or f"Top {len(top)} interventions", fontsize=11)
    ax.grid(axis="x", color="#dddddd", lw=0.5)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return fig


@_plain_text
def entity_heatmap(
    entity_shift: pd.DataFrame,
    interventions: Sequence[str],
    *,
    top_entities: int = 15,
    title: str | None = None,
) -> Figure:
    """How far each of ``interventions`` moves the most-moved entities (latent shift, slot-spread units).

    ``entity_shift`` is ``[interventions x entities]``; rows are taken in the given order,
    columns = the ``top_entities`` with the largest mean shift over those rows.
    """
    rows = [i for i in interventions if i in entity_shift.index]
    if not rows or entity_shift.shape[1] == 0:
        return _empty("no entity shifts to show")
    sub = entity_shift.loc[rows]
    cols = sub.mean(0).sort_values(ascending=False).index[:top_entities]
    sub = sub[cols]
    values = sub.to_numpy(float)
    fig = Figure(figsize=(0.42 * len(cols) + 4.6, 0.3 * len(rows) + 2.6))
    ax = fig.subplots()
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0)
    ax.set_xticks(np.arange(len(cols)))
    ax.set_xticklabels([short_label(c, 30) for c in cols], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(np.arange(len(rows)))
    ax.set_yticklabels([short_label(r, 50) for r in rows], fontsize=7)
    cbar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cbar.set_label("latent shift (slot spread)", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    ax.set_title(title or "Entity propagation of the top interventions", fontsize=11)
    fig.tight_layout()
    return fig


@_plain_text
def gene_heatmap(
    gene_delta: pd.DataFrame,
    *,
    top_genes: int = 30,
    max_rows: int = 20,
    highlight: Sequence[str] = (),
    title: str | None = None,
) -> Figure:
    """Gene x intervention heatmap of predicted changes (``gene_delta`` ``[interventions x genes]``).

    Rows = the first ``max_rows`` interventions in the given order; columns = the ``top_genes`` genes
    with the largest mean absolute change over those rows; diverging colours centred on 0 (red = up).
    Genes in ``highlight`` (e.g. the goal's readout genes) are marked with ``*``. A knocked-out gene's own
    transcript (the gene named by the row) is circled and left out of the colour range, which it would
    otherwise set alone, leaving every other cell white; beyond the range it shows the end colour (the colour
    bar's arrows).
    """
    if gene_delta is None or gene_delta.empty:
        return _empty("no per-gene predictions to show")
    sub = gene_delta.iloc[:max_rows]
    cols = sub.abs().mean(0).sort_values(ascending=False).index[:top_genes]
    sub = sub[cols]
    values = sub.to_numpy(float)
    own = _own_transcripts(list(sub.index), [str(c) for c in cols])
    rest = np.abs(values[~own & np.isfinite(values)])
    lim = float(rest.max()) if rest.size and rest.max() > 0 else (
        float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0)
    lim = lim if lim > 0 else 1.0
    fig = Figure(figsize=(0.3 * len(cols) + 4.6, 0.3 * len(sub) + 2.4))
    ax = fig.subplots()
    im = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    if own.any():  # a knocked-out gene's own transcript: marked, and not the colour scale's range
        r, c = np.nonzero(own)
        ax.scatter(c, r, marker="o", s=10, facecolors="none", edgecolors="black", linewidths=0.8)
    marks = set(highlight)
    ax.set_xticks(np.arange(len(cols)))
    ax.set_xticklabels([f"{c}*" if c in marks else str(c) for c in cols], rotation=70, ha="right", fontsize=7)
    ax.set_yticks(np.arange(len(sub)))
    ax.set_yticklabels([short_label(r, 50) for r in sub.index], fontsize=7)
    beyond = bool(own.any() and np.nanmax(np.abs(values[own])) > lim)
    cbar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, extend="both" if beyond else "neither")
    cbar.set_label("predicted change (control sd)", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    ax.set_title(title or "Predicted change of the most-moved genes", fontsize=11)
    fig.tight_layout()
    return fig


def _own_transcripts(rows: Sequence[str], genes: Sequence[str]) -> np.ndarray:
    """``[rows, genes]`` True where the gene is one a row's intervention knocks out / down or activates itself (its
    name is a part of the label: ``STAT1``, ``A+B``, ``kd:GENE:0.5``): that cell shows the gene's own transcript."""
    parts = [set(re.split(r"[+:@]", str(r))) for r in rows]
    return np.array([[g in p for g in genes] for p in parts], dtype=bool).reshape(len(rows), len(genes))


@_plain_text
def per_cell_distributions(
    per_cell_scores: Mapping[str, np.ndarray],
    *,
    order: Sequence[str] | None = None,
    top_n: int = 12,
    title: str | None = None,
) -> Figure:
    """Distribution over cells of each intervention's goal score (violins with the median marked)."""
    labels = [lab for lab in (order if order is not None else list(per_cell_scores)) if lab in per_cell_scores]
    labels = labels[:top_n]
    data = [np.asarray(per_cell_scores[lab], float) for lab in labels]
    data = [d[np.isfinite(d)] for d in data]
    keep = [i for i, d in enumerate(data) if len(d)]
    labels, data = [labels[i] for i in keep], [data[i] for i in keep]
    if not data:
        return _empty("no per-cell scores to show")
    labels, data = labels[::-1], data[::-1]  # best at the top
    y = np.arange(1, len(data) + 1)
    fig = Figure(figsize=(9.0, 0.42 * len(data) + 1.4))
    ax = fig.subplots()
    varied = [i for i, d in enumerate(data) if len(d) > 1 and np.ptp(d) > 0]
    if varied:
        parts = ax.violinplot([data[i] for i in varied], positions=y[varied], widths=0.8, **_HORIZONTAL,
                              showextrema=False)
        for body in parts["bodies"]:
            body.set_facecolor("#9ecae1")
            body.set_edgecolor("#3182bd")
            body.set_alpha(0.8)
    ax.boxplot(data, positions=y, widths=0.25, **_HORIZONTAL, showfliers=False,
               medianprops={"color": "#000000"}, patch_artist=True,
               boxprops={"facecolor": "white", "edgecolor": "#333333"})
    ax.set_yticks(y)
    ax.set_yticklabels([short_label(s, 60) for s in labels], fontsize=8)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("per-cell goal score")
    ax.set_title(title or "Per-cell scores (how consistently each intervention works)", fontsize=11)
    ax.grid(axis="x", color="#dddddd", lw=0.5)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return fig


@_plain_text
def pair_synergy_matrix(pair_synergy: pd.DataFrame, *, max_entities: int = 25, title: str | None = None) -> Figure:
    """Pair score minus the sum of its singles, entity x entity (diverging, centred at 0, NaN masked).

    With more than ``max_entities`` entities, the ones in the strongest interactions are shown.
    """
    if pair_synergy is None or pair_synergy.size == 0 or not np.isfinite(pair_synergy.to_numpy(float)).any():
        return _empty("no pairs were scored (--no-pairs / pairs=False, or fewer than two entities)")
    syn = pair_synergy.astype(float)
    if len(syn) > max_entities:
        strength = syn.abs().max(1).fillna(0).sort_values(ascending=False)
        keep = list(strength.index[:max_entities])
        keep = [e for e in syn.index if e in set(keep)]  # stable order
        syn = syn.loc[keep, keep]
    values = syn.to_numpy(float)
    finite = values[np.isfinite(values)]
    bound = float(np.max(np.abs(finite))) if finite.size else 1.0
    bound = bound if bound > 0 else 1.0
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#eeeeee")
    n = len(syn)
    size = 0.3 * n + 3.4
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound))
    names = [short_label(e, 28) for e in syn.index]
    ax.set_xticks(np.arange(n))
    ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(np.arange(n))
    ax.set_yticklabels(names, fontsize=7)
    cbar = fig.colorbar(im, ax=ax, fraction=0.045, pad=0.02)
    cbar.set_label("synergy (pair − sum of singles)", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    ax.set_title(title or "Pair synergy of silenced entities (grey = not scored)", fontsize=11)
    fig.tight_layout()
    return fig


def _plain_log_ticks(axis: Any) -> None:
    """Log-axis tick labels as plain numbers (``0.3``, ``2``, ``1e-05``): matplotlib's default log formatters write
    mathtext (``$\\mathdefault{10^{0}}$``), which the figures' math-off setting (:func:`_plain_text`) shows raw."""
    from matplotlib.ticker import LogFormatter

    class PlainLog(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return f"{x:g}"

    axis.set_major_formatter(PlainLog())
    axis.set_minor_formatter(PlainLog(labelOnlyBase=False))


@_plain_text
def training_curves(history: Sequence[Mapping[str, Any]], *, title: str | None = None) -> Figure:
    """Training loss (total and per term) and the collapse monitor against the step."""
    if not history:
        return _empty("no training history recorded")
    df = pd.DataFrame(list(history))
    if "step" not in df:
        df["step"] = np.arange(1, len(df) + 1)
    monitor = [c for c in ("target_std", "eff_rank") if c in df]
    terms = [c for c in df.columns if c not in ("step", "loss", *monitor)
             and pd.api.types.is_numeric_dtype(df[c])]
    n_panels = 2 + bool(monitor)
    fig = Figure(figsize=(4.0 * n_panels + 1, 3.4))
    axes = fig.subplots(1, n_panels, squeeze=False)
    ax = axes[0, 0]
    if "loss" in df:
        ax.plot(df["step"], df["loss"], color="black", lw=1.4)
    ax.set_title("total loss", fontsize=10)
    ax.set_xlabel("step")
    ax = axes[0, 1]
    cmap = matplotlib.colormaps["tab10"]
    for i, term in enumerate(terms):
        ax.plot(df["step"], df[term], lw=1.1, color=cmap(i % 10), label=term)
    positive = terms and (df[terms].to_numpy(float) > 0).all()
    if positive:
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
    ax.set_title("loss terms" + (" (log scale)" if positive else ""), fontsize=10)
    ax.set_xlabel("step")
    if terms:
        ax.legend(fontsize=7, frameon=False, ncol=2)
    if monitor:
        ax = axes[0, 2]
        ax.plot(df["step"], df[monitor[0]], color="#2ca02c", lw=1.2, label=monitor[0])
        ax.set_ylabel(monitor[0], fontsize=8, color="#2ca02c")
        if len(monitor) > 1:
            ax2 = ax.twinx()
            ax2.plot(df["step"], df[monitor[1]], color="#9467bd", lw=1.2, label=monitor[1])
            ax2.set_ylabel(monitor[1], fontsize=8, color="#9467bd")
        ax.set_title("collapse monitor (target latents)", fontsize=10)
        ax.set_xlabel("step")
    for a in axes[0]:
        a.tick_params(which="both", labelsize=8)
        a.grid(color="#eeeeee", lw=0.5)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


@_plain_text
def accuracy_bars(
    accuracy: pd.DataFrame,
    *,
    highlight: str = "WorldModel",
    max_metrics: int = 6,
    title: str | None = None,
) -> Figure:
    """Held-out accuracy per method, one panel per metric (bars = mean, whiskers = sd).

    ``accuracy`` has columns ``method, metric, value`` and optionally ``sd`` and ``split`` (one
    bar group per split). The ``highlight`` method (the world model) is drawn in red.
    """
    if accuracy is None or len(accuracy) == 0:
        return _empty("no held-out benchmark available")
    acc = accuracy.copy()
    if "split" not in acc:
        acc["split"] = ""
    if "sd" not in acc:
        acc["sd"] = np.nan
    metrics = list(dict.fromkeys(acc["metric"].astype(str)))[:max_metrics]
    methods = list(dict.fromkeys(acc["method"].astype(str)))
    splits = list(dict.fromkeys(acc["split"].astype(str)))
    fig = Figure(figsize=(max(2.8 * len(metrics), 5.0) + 0.6, 3.8))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    width = 0.8 / max(1, len(splits))
    hatches = ["", "//", "..", "xx", "\\\\"]
    for ax, metric in zip(axes[0], metrics):
        part = acc[acc["metric"].astype(str) == metric]
        for j, split in enumerate(splits):
            sp = part[part["split"].astype(str) == split]
            sp = sp.set_index(sp["method"].astype(str))
            x = np.arange(len(methods)) + (j - (len(splits) - 1) / 2) * width
            vals = np.array([float(sp.loc[m, "value"]) if m in sp.index else np.nan for m in methods])
            sds = np.array([float(sp.loc[m, "sd"]) if m in sp.index else np.nan for m in methods])
            sds = np.where(np.isfinite(sds), sds, 0.0)
            colors = [_WORLD_MODEL_COLOR if m == highlight else _BASELINE_COLOR for m in methods]
            ax.bar(x, np.nan_to_num(vals), width=width * 0.95, yerr=sds, color=colors, capsize=2,
                   hatch=hatches[j % len(hatches)], edgecolor="white", label=split or None)
        ax.set_xticks(np.arange(len(methods)))
        ax.set_xticklabels([short_label(m, 22) for m in methods], rotation=55, ha="right", fontsize=7)
        ax.set_title(short_label(metric, 34), fontsize=9)
        ax.axhline(0, color="black", lw=0.5)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", color="#eeeeee", lw=0.5)
        ax.set_axisbelow(True)
    if len(splits) > 1:
        axes[0, 0].legend(fontsize=7, frameon=False, title="split (hatch)", title_fontsize=7)
    fig.suptitle(title or f"Held-out accuracy: {highlight} (red) vs baselines (grey)", fontsize=10)
    fig.tight_layout()
    return fig
