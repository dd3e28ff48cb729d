"""Atlas context transfer: predict a compound's signature in a context where it was measured, withheld.

Split (per seed): among compound signatures whose compound was measured in >= 3 contexts, a random
``frac`` are withheld; every model and baseline sees only the other signatures (the knowledge
features are rebuilt from the training signatures too). Scores per withheld signature:

- ``spearman``: Spearman correlation over the genes the observed signature ranks (its non-zero
  entries, the 500 most up and 500 most down; 500 up for CRISPRi) — does the prediction order them;
- ``pearson``: Pearson correlation over the whole gene space (zeros included).

Baselines: ``CompoundMean`` (the compound's mean signature over its other contexts),
``ContextMean`` (the context's mean over its other signatures), ``CompoundPlusContext`` (their
z-scored sum). Methods: ``AtlasModel`` and its ablations of the curated-knowledge features (none;
compound -> target links shuffled; network gene labels shuffled; atlas signatures in the knowledge
features re-assigned between perturbations) and of the retrieval inputs (*shuffled retrieval*: each
compound's signatures in other contexts — and so its look-alikes — are another compound's; the
withheld targets, the context mean and the knowledge features are untouched — and the knowledge
features hold a projection of the compound's own atlas signatures; *shuffled retrieval + signatures*
moves those too, so no input carries the compound's own signatures elsewhere; *shuffled retrieval, no
knowledge* drops them). A consistent key
permutation (*shuffled signatures*) leaves the retrieval inputs grouped as before; *shuffled retrieval*
does not.

``split="compound"`` (:func:`unseen_compound_split`) instead withholds every signature of a random
``frac`` of the compounds: no method sees the compound's signature in any context, so only the
context mean and the knowledge features (targets, network) can speak for it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["atlas_split", "run_atlas_transfer", "score_signatures", "unseen_compound_split"]

def atlas_split(atlas: Any, *, frac: float = 0.1, min_contexts: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, test_rows)``: ``frac`` of the compound signatures whose compound has >= ``min_contexts``
    contexts are withheld (seeded)."""
    obs = atlas.obs
    comp = obs["kind"].to_numpy() == "compound"
    n_ctx = obs[comp].groupby("key")["context"].nunique()
    eligible = np.flatnonzero(comp & (obs["key"].map(n_ctx).fillna(0).to_numpy() >= min_contexts))
    rng = np.random.default_rng(seed)
    test = np.sort(rng.choice(eligible, size=max(1, int(round(frac * len(eligible)))), replace=False))
    return np.setdiff1d(np.arange(len(obs)), test), test


def unseen_compound_split(atlas: Any, *, frac: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, test_rows)``: every signature of a random ``frac`` of the compounds is withheld
    (seeded), so the withheld compounds have no signature in any training context."""
    obs = atlas.obs
    comp = obs["kind"].to_numpy() == "compound"
    keys = np.array(sorted(obs.loc[comp, "key"].unique()))
    rng = np.random.default_rng(seed)
    held = rng.choice(keys, size=max(1, int(round(frac * len(keys)))), replace=False)
    test = np.flatnonzero(comp & obs["key"].isin(held).to_numpy())
    return np.setdiff1d(np.arange(len(obs)), test), test


SPLITS = {"context": atlas_split, "compound": unseen_compound_split}


def score_signatures(pred: np.ndarray, observed: np.ndarray) -> pd.DataFrame:
    """Per row: Spearman over the observed signature's non-zero genes, Pearson over all genes."""
    sp, pe = [], []
    for p, y in zip(pred, observed):
        nz = y != 0
        sp.append(stats.spearmanr(p[nz], y[nz])[0] if nz.sum() > 2 and np.ptp(p[nz]) > 0 else np.nan)
        pe.append(np.corrcoef(p, y)[0, 1] if np.ptp(p) > 0 else np.nan)
    return pd.DataFrame({"spearman": sp, "pearson": pe})


def _baselines(inputs: Any, test: np.ndarray) -> dict[str, np.ndarray]:
    from bioworld.knowledge import zscore_rows

    zc, has_c, zk, _ = inputs.for_rows(test)
    return {"CompoundMean": np.where(has_c[:, None] > 0, zc, zk), "ContextMean": zk,
            "CompoundPlusContext": zscore_rows(zc) + zk}


VARIANTS = {
    "AtlasModel": ({}, ()),
    "AtlasModel (no knowledge)": ({"use_knowledge": False}, ()),
    "AtlasModel (shuffled targets)": ({}, ("targets",)),
    "AtlasModel (shuffled network)": ({}, ("network",)),
    "AtlasModel (shuffled signatures)": ({}, ("signatures",)),
    "AtlasModel (shuffled retrieval)": ({"shuffle_retrieval": True}, ()),
    "AtlasModel (shuffled retrieval + signatures)": ({"shuffle_retrieval": True}, ("signatures",)),
    "AtlasModel (shuffled retrieval, no knowledge)": ({"shuffle_retrieval": True, "use_knowledge": False}, ()),
    "AtlasModel (redrawn retrieval)": ({"shuffle_retrieval": True, "redraw_retrieval": True}, ()),
    "AtlasModel (redrawn retrieval, no knowledge)": ({"shuffle_retrieval": True, "redraw_retrieval": True,
                                                      "use_knowledge": False}, ()),
    "AtlasModel (blind drop)": ({"drop_blinds_knowledge": True}, ()),
    "AtlasModel (blind drop, shuffled targets)": ({"drop_blinds_knowledge": True}, ("targets",)),
    "AtlasModel (blind drop, shuffled network)": ({"drop_blinds_knowledge": True}, ("network",)),
    "AtlasModel (blind drop + knowledge retrieval)": ({"drop_blinds_knowledge": True, "knowledge_retrieval": True}, ()),
    "AtlasModel (blind drop + knowledge retrieval, shuffled targets)": (
        {"drop_blinds_knowledge": True, "knowledge_retrieval": True}, ("targets",)),
    "AtlasModel (blind drop + knowledge retrieval, shuffled network)": (
        {"drop_blinds_knowledge": True, "knowledge_retrieval": True}, ("network",)),
    "AtlasModel (knowledge retrieval)": ({"knowledge_retrieval": True}, ()),
    "AtlasModel (knowledge retrieval, shuffled targets)": ({"knowledge_retrieval": True}, ("targets",)),
    "AtlasModel (knowledge retrieval, shuffled network)": ({"knowledge_retrieval": True}, ("network",)),
    # design options screened for the context-transfer target (issue #11; benchmarks/screen_atlas.py)
    "AtlasModel (neighbour residual)": ({"neighbour_residual": True}, ()),
    "AtlasModel (ranked loss 0.5)": ({"ranked_loss": 0.5}, ()),
    "AtlasModel (neighbour residual + ranked loss 0.5 + basis 128)": (
        {"neighbour_residual": True, "ranked_loss": 0.5, "basis_dim": 128}, ()),
}


def run_atlas_transfer(
    *,
    seeds: Sequence[int] = (0, 1, 2),
    steps: int | None = None,
    ablations: bool = True,
    variants: Sequence[str] | None = None,
    baselines: bool = True,
    frac: float = 0.1,
    split: str = "context",
    progress: bool = True,
) -> pd.DataFrame:
    """Scores of every method on withheld (compound, context) signatures; one row per (method, seed,
    signature), with ``attrs['wall_s']`` (training seconds per method and seed). ``variants`` picks
    among :data:`VARIANTS` (default: all with ``ablations``, else only ``AtlasModel``); ``split`` is
    ``"context"`` (:func:`atlas_split`) or ``"compound"`` (:func:`unseen_compound_split`)."""
    from bioworld.knowledge import KnowledgeBase, KnowledgeConfig, SignatureAtlas, load_atlas
    from bioworld.train.pretrain import PretrainConfig, _Inputs, pretrain_atlas

    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {sorted(SPLITS)}.")
    atlas = load_atlas()
    names = list(variants) if variants is not None else (list(VARIANTS) if ablations else ["AtlasModel"])
    frames, walls = [], {}
    for seed in seeds:
        train, test = SPLITS[split](atlas, frac=frac, seed=seed)
        inputs = _Inputs(atlas, train, atlas.basis(64, rows=train, seed=seed))
        observed = atlas.X[test]
        meta = atlas.obs.iloc[test][["signature", "source", "context", "key"]].reset_index(drop=True)
        preds = _baselines(inputs, test) if baselines else {}
        seen = SignatureAtlas(atlas.X[train], atlas.obs.iloc[train].reset_index(drop=True), atlas.genes)
        for name in names:
            over, shuffle = VARIANTS[name]
            cfg = PretrainConfig(seed=seed, **({"steps": steps} if steps else {}), **over)
            kb = KnowledgeBase(KnowledgeConfig(seed=seed, shuffle=shuffle), atlas=seen) if cfg.use_knowledge else None
            t = time.perf_counter()
            # shuffled signatures: keys permuted consistently (knowledge features move; retrieval groups do not)
            # (with shuffled retrieval the atlas stays as it is: the donors and the knowledge features move apart)
            source = atlas.shuffled(seed) if shuffle == ("signatures",) and not cfg.shuffle_retrieval else atlas
            model = pretrain_atlas(atlas=source, train_rows=train, knowledge=kb, config=cfg, progress=progress)
            walls[(name, seed)] = time.perf_counter() - t
            preds[name] = model.predict_rows(test)
        for name, p in preds.items():
            s = score_signatures(p, observed)
            frames.append(pd.concat([meta, s], axis=1).assign(method=name, seed=seed))
    df = pd.concat(frames, ignore_index=True)
    df.attrs["wall_s"] = {f"{m}|{s}": round(w, 1) for (m, s), w in walls.items()}
    return df


def summarize_atlas(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds (of each seed's mean over signatures), per method and metric."""
    per_seed = df.groupby(["method", "seed"])[["spearman", "pearson"]].mean()
    out = per_seed.groupby("method").agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    best = max(("CompoundMean", "ContextMean", "CompoundPlusContext"), key=lambda m: out.loc[m, "spearman_mean"])
    out["spearman_vs_best_baseline"] = out["spearman_mean"] - out.loc[best, "spearman_mean"]
    out.attrs["best_baseline"] = best
    return out.sort_values("spearman_mean", ascending=False)
