"""One self-contained HTML report of a prioritisation (plots embedded, CSS inline, no external URLs)."""

from __future__ import annotations

import base64
import datetime as _dt
import io
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bioworld.errors import BioworldError

__all__ = ["fit_failure", "goal_in_words", "load_accuracy", "main_rows", "model_accuracy", "write_report"]

#: Method name of the world model in benchmark tables.
WORLD_MODEL_METHOD = "WorldModel"
REPORT_NAME = "report.html"
CSV_NAME = "ranked_interventions.csv"
TABLE_ROWS = 30


# --------------------------------------------------------------------------------- the question
def goal_in_words(goal: str) -> str:
    """A plain-language sentence for a goal spec (``down:ENTITY``, ``up:ENTITY``, ``toward:control``)."""
    direction, _, target = str(goal).partition(":")
    if direction == "down":
        return (f"Which interventions (single, or a pair) most lower the activity of {target} in these cells? "
                f"Activity is the weighted mean z-score of {target}'s member genes, read from the predicted "
                "expression; the score is the predicted decrease against the same cells' predicted unperturbed "
                "state (higher = better).")
    if direction == "up":
        return (f"Which interventions (single, or a pair) most raise the activity of {target} in these cells? "
                f"Activity is the weighted mean z-score of {target}'s member genes, read from the predicted "
                "expression; the score is the predicted increase against the same cells' predicted unperturbed "
                "state (higher = better).")
    if direction == "toward":
        return ("Which interventions (single, or a pair) move these cells closest to the reference control "
                "population? The score is the predicted reduction of the distance (standardised genes) between "
                "a cell and the control mean (higher = better).")
    return f"Goal {goal!r}: higher score = better."


# ----------------------------------------------------------------------------------- accuracy
def model_accuracy(model: Any) -> pd.DataFrame | None:
    """The model's own held-out table (``bioworld evaluate`` / :func:`bioworld.eval.evaluate`), or None.

    ``WorldModel.load`` reads it from the model folder's ``evaluation.csv`` into ``model.evaluation``;
    nothing else (no benchmark of another model, no file of a checkout) stands in for it.
    """
    ev = getattr(model, "evaluation", None) if model is not None else None
    if ev is None and model is not None and hasattr(model, "members"):
        ev = getattr(model.members[0], "evaluation", None)
    return ev if isinstance(ev, pd.DataFrame) and len(ev) else None


def load_accuracy(accuracy: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Normalise a benchmark table to columns ``method, metric, value, sd`` (+ ``split`` if present).

    Accepts ``(method, metric, value[, sd])`` or a benchmark summary ``(…, method, metric, mean,
    sd, n)`` as written by :func:`bioworld.eval.benchmark.write_outputs`, or a path to such a CSV.
    """
    df = pd.read_csv(accuracy) if isinstance(accuracy, (str, os.PathLike)) else accuracy.copy()
    if "value" not in df.columns and "mean" in df.columns:
        df = df.rename(columns={"mean": "value"})
    missing = [c for c in ("method", "metric", "value") if c not in df.columns]
    if missing:
        raise BioworldError(
            f"accuracy table lacks column(s) {missing}; found {list(df.columns)}. Expected columns "
            "method, metric, value[, sd] (or a benchmark summary with method, metric, mean, sd)."
        )
    if "sd" not in df.columns:
        df["sd"] = np.nan
    cols = ["method", "metric", "value", "sd"] + (["split"] if "split" in df.columns else [])
    out = df[cols].copy()
    out["value"] = pd.to_numeric(out["value"], errors="coerce")
    out["sd"] = pd.to_numeric(out["sd"], errors="coerce")
    return out.reset_index(drop=True)


def _lower_is_better(metric: str) -> bool:
    m = metric.lower()
    if re.search(r"reduction|improvement|gain|accuracy|pearson|spearman|r2|auc|discrimination", m):
        return False
    return bool(re.search(r"(^|_)(mse|mae|rmse|error|distance|energy|loss)(_|$)", m))


def _accuracy_view(acc: pd.DataFrame) -> dict[str, Any]:
    """Table rows (one per split x method) with 'mean ± sd' per metric, the best marked, and a verdict."""
    acc = acc.copy()
    if "split" not in acc.columns:
        acc["split"] = ""
    metrics = list(dict.fromkeys(acc["metric"].astype(str)))
    headers = [{"name": m, "arrow": "↓" if _lower_is_better(m) else "↑"} for m in metrics]
    rows, wins, total = [], 0, 0
    for split, part in acc.groupby("split", sort=False):
        methods = list(dict.fromkeys(part["method"].astype(str)))
        best: dict[str, str] = {}
        for metric in metrics:
            pm = part[part["metric"].astype(str) == metric].dropna(subset=["value"])
            if pm.empty:
                continue
            idx = pm["value"].idxmin() if _lower_is_better(metric) else pm["value"].idxmax()
            best[metric] = str(pm.loc[idx, "method"])
            if WORLD_MODEL_METHOD in set(pm["method"].astype(str)):
                total += 1
                wins += best[metric] == WORLD_MODEL_METHOD
        for method in methods:
            pm = part[part["method"].astype(str) == method].set_index("metric")
            cells = []
            for metric in metrics:
                if metric not in pm.index:
                    cells.append({"text": "", "best": False})
                    continue
                v, s = float(pm.loc[metric, "value"]), float(pm.loc[metric, "sd"])
                text = "n/a" if not math.isfinite(v) else (f"{v:.3f} ± {s:.3f}" if math.isfinite(s) else f"{v:.3f}")
                cells.append({"text": text, "best": best.get(metric) == method})
            rows.append({"split": str(split), "method": method, "cells": cells,
                         "is_model": method == WORLD_MODEL_METHOD})
    if total:
        verdict = (f"{WORLD_MODEL_METHOD} is the best method on {wins} of {total} metric × split "
                   "combinations where it was scored (best per column in bold; arrows give the better direction).")
    else:
        verdict = f"The benchmark table holds no {WORLD_MODEL_METHOD} rows: only baselines were scored."
    splits = set(acc["split"].astype(str))
    return {"headers": headers, "rows": rows, "show_split": len(splits) > 1 or bool(acc["split"].astype(str).iloc[0]),
            "verdict": verdict, "only_seen": splits == {"seen"}}


# --------------------------------------------------------------------------------- helpers
def _png(fig: Any, dpi: int = 110) -> str:
    """A matplotlib Figure (built without pyplot, so nothing to close) as a ``data:`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(v):
        return "—"
    if v != 0 and abs(v) < 0.5 * 10 ** -digits:  # would print as (-)0.000: keep the magnitude visible
        return f"{v:.1e}"
    return f"{v:.{digits}f}"


def _wall(seconds: Any) -> str:
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return "not recorded"
    if not math.isfinite(s):
        return "not recorded"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min ({s:.0f} s)"


def _counterfactual_view(counterfactuals: Any, top: int = 10) -> list[dict[str, Any]]:
    """Per intervention: entities ordered by latent shift (+ most-moved genes when an AnnData is given)."""
    if counterfactuals is None:
        return []
    genes_moved: dict[str, dict[str, list[tuple[str, float]]]] = {}
    enriched: dict[str, list[tuple[str, str, str]] | str] = {}
    n_cells: dict[str, int] = {}
    if hasattr(counterfactuals, "uns") and hasattr(counterfactuals, "obs"):
        cf = counterfactuals
        bw_uns = cf.uns.get("bioworld", {})
        effects = bw_uns.get("entity_effects", {}) if hasattr(bw_uns, "get") else {}
        if not effects:
            raise BioworldError(
                "counterfactuals has no uns['bioworld']['entity_effects']; expected the AnnData returned by "
                "WorldModel.counterfactual (or a dict intervention -> list of {entity, shift, share})"
            )
        from bioworld.report._enrichment import answer_genes, layer_values

        layer = "delta" if "delta" in cf.layers else None
        labels = cf.obs["bw_intervention"].astype(str).to_numpy() if "bw_intervention" in cf.obs else None
        if layer is not None and labels is not None:
            delta = layer_values(cf, layer)
            names = np.asarray(answer_genes(cf))  # symbols when the model's var_names are ids
            for spec in effects:
                rows = labels == spec
                if not rows.any():
                    continue
                mean = delta[rows].mean(0)
                order = np.argsort(mean)
                genes_moved[spec] = {
                    "up": [(names[i], f"{mean[i]:+.3g}") for i in order[::-1][:6] if mean[i] > 0],
                    "down": [(names[i], f"{mean[i]:+.3g}") for i in order[:6] if mean[i] < 0],
                }
                n_cells[spec] = int(rows.sum())
                enriched[spec] = _enriched(cf, spec, layer)
    elif isinstance(counterfactuals, Mapping):
        effects = counterfactuals
    else:
        raise BioworldError(
            f"counterfactuals is a {type(counterfactuals).__name__}; expected the AnnData returned by "
            "WorldModel.counterfactual or a dict intervention -> list of {entity, shift, share}"
        )
    from bioworld.report._h5ad import effect_records

    out = []
    for spec, items in effects.items():
        items = sorted(effect_records(items), key=lambda d: -float(d.get("shift", 0.0)))
        shown = [{"entity": str(d.get("entity", "")), "shift": _num(d.get("shift")),
                  "share": _num(100 * float(d.get("share", float("nan"))), 1),
                  "bar": max(0.0, min(100.0, 100 * float(d.get("share", 0.0)) if d.get("share") is not None else 0.0))}
                 for d in items[:top]]
        out.append({"spec": str(spec), "entities": shown, "n_more": max(0, len(items) - top),
                    "genes": genes_moved.get(str(spec)), "n_cells": n_cells.get(str(spec)),
                    "enriched": enriched.get(str(spec))})
    return out


#: Pathways shown per counterfactual: preranked GSEA (gseapy) of the mean delta on Hallmark sets.
ENRICH_SETS, ENRICH_FDR, ENRICH_TOP, ENRICH_PERMUTATIONS = "hallmark", 0.25, 4, 1000


def _enriched(cf: Any, spec: str, layer: str) -> list[tuple[str, str, str]] | str:
    """``(term, NES, FDR)`` of the Hallmark sets the mean predicted change of ``spec`` enriches (FDR < 0.25), or why
    nothing was tested (no set has enough genes on the panel: another species, a small panel, a simulator)."""
    from bioworld.report._enrichment import enrichment

    with warnings.catch_warnings():  # the reason is shown in the report instead of warned once per intervention
        warnings.simplefilter("ignore", UserWarning)
        res = enrichment(cf, spec, gene_sets=ENRICH_SETS, layer=layer, permutations=ENRICH_PERMUTATIONS, seed=0)
    if "not_tested" in res.attrs:
        return f"not tested: {res.attrs['not_tested']}"
    res = res[res["fdr"] < ENRICH_FDR].head(ENRICH_TOP)
    return [(str(r.term), f"{r.nes:+.2f}", f"{r.fdr:.3f}") for r in res.itertuples()]


def _provenance(result: Any, model: Any) -> list[tuple[str, str]]:
    from bioworld._version import __version__

    prov = dict(getattr(result, "provenance", {}) or {})
    desc = dict(prov.get("model") or {})
    if model is not None and hasattr(model, "describe"):
        desc = {**model.describe(), **desc}
    rows: list[tuple[str, str]] = []
    if "n_genes" in desc:
        rows.append(("genes in the panel", f"{desc['n_genes']:,}"))
    if "n_entities" in desc:
        names = list(getattr(model, "entity_names", []) or [])
        extra = f" ({', '.join(names[:6])}{' …' if len(names) > 6 else ''})" if names else ""
        rows.append(("entities (slots)", f"{desc['n_entities']}{extra}"))
    if desc.get("entity_hash"):
        rows.append(("entity definitions hash", str(desc["entity_hash"])[:16] + "…"))
    train = [t for t in desc.get("train_labels", []) if t != getattr(model, "control", "control")]
    if "train_labels" in desc:
        rows.append(("training perturbations", f"{len(train)}: {', '.join(train[:25])}{' …' if len(train) > 25 else ''}"))
    if "holdout" in desc:
        hold = list(desc["holdout"])
        rows.append(("held out of training", ", ".join(hold) if hold else "none (every perturbation was trained on)"))
    if "input" in desc:
        rows.append(("input", str(desc["input"]) + (f"; predictions on the {prov['scale']} scale" if prov.get("scale") else "")))
    if "seed" in desc:
        rows.append(("seed", str(desc["seed"])))
    tr = getattr(model, "train_result", None) if model is not None else None
    if tr is not None:
        rows.append(("training", f"{tr.steps} steps in {_wall(tr.wall_s)} ({tr.cells_per_s:,.0f} cells/s)"))
    else:
        rows.append(("training wall time", _wall(desc.get("train_wall_s"))))
    if "n_cells_used" in prov:
        given = prov.get("n_cells_given", prov["n_cells_used"])
        rows.append(("cells queried", f"{prov['n_cells_used']:,} (of {given:,} given)"))
    if "n_candidates" in prov:
        rows.append(("candidate interventions scored", f"{prov['n_candidates']:,}"))
    if prov.get("compounds_not_scored_text"):
        rows.append(("compounds not scored", str(prov["compounds_not_scored_text"])))
    if prov.get("interval"):
        rows.append(("intervals", str(prov["interval"])))
    if getattr(result, "wall_s", None):
        rows.append(("prioritisation wall time", _wall(result.wall_s)))
    findings = list(getattr(model, "findings", []) or []) if model is not None else []
    for f in findings[:5]:
        rows.append(("data finding", str(f)))
    rows.append(("bioworld version", str(__version__)))
    rows.append(("report date", _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")))
    return rows


def _text(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else str(v)


def _ranked_rows(table: pd.DataFrame, n: int, notes: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    rows = []
    notes = notes or {}
    for _, r in table.head(n).iterrows():
        seen = r.get("seen")
        rows.append({
            "rank": int(r["rank"]) if "rank" in r and pd.notna(r["rank"]) else "",
            "intervention": str(r["intervention"]),
            "kind": str(r.get("kind", "")),
            "score": _num(r.get("score")),
            "priority": _priority_text(r),
            "interval": f"[{_num(r.get('score_lo'))}, {_num(r.get('score_hi'))}]",
            "synergy": _num(r.get("synergy")) if "synergy" in r else "—",
            "top_entities": str(r.get("top_entities", "")),
            "seen": "" if seen is None or (isinstance(seen, float) and math.isnan(seen)) else ("yes" if bool(seen) else "no"),
            "evidence": _text(r.get("evidence")),
            "path": _path_text(r),
            "drugs": _text(r.get("drugs")),
            "reason": _text(r.get("flag_reason")),
            "collapsed": notes.get(str(r["intervention"]), ""),
            "same": _same_action_note(r),
        })
    return rows


def _path_text(r: Any) -> str:
    """``STAT1 → IRF1 (removal lowers the readout)``: the row's ``network_path`` with its ``path_effect`` (pairs: each
    part's), "" without one (a table from before the column, or no directed path)."""
    paths, effects = _text(r.get("network_path")), _text(r.get("path_effect"))
    if not paths:
        return ""
    eff = effects.split("; ")
    parts = paths.split("; ")
    return "; ".join(f"{p} (removal {e} the readout)" if e else p
                     for p, e in zip(parts, eff + [""] * (len(parts) - len(eff))))


def _same_action_note(r: Any) -> str:
    """``+2 compounds scored as the same action: A, B`` for a row standing for several compounds (every
    name; column ``same_action``), else ""."""
    names = _text(r.get("same_action"))
    if not names:
        return ""
    n = int(r.get("n_same_action", 0) or 0) or len(names.split(", "))
    return f"+{n} compound{'s' if n > 1 else ''} scored as the same action (same targets): {names}"


def _priority_text(r: Any) -> str:
    """``0.93 (0.90, 0.96, 0.88)``: priority (model percentile, network proximity percentile, directed influence
    percentile; a table without the last, from an earlier version: two); "" without a priority."""
    def pct(v: Any) -> str:
        return f"{float(v):.2f}" if v is not None and pd.notna(v) else "—"

    if r.get("priority") is None or pd.isna(r.get("priority")):
        return ""
    parts = [pct(r.get("model_pct")), pct(r.get("prior_pct"))] + ([pct(r.get("directed_pct"))] if "directed_pct" in r else [])
    return f"{pct(r.get('priority'))} ({', '.join(parts)})"


def _split_flagged(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(targets, mechanisms, flagged) in rank order: unflagged rows without a silence (genes,
    compounds and their pairs), unflagged rows with an entity silence (mechanism hypotheses), and
    rows the tautology guard flagged. No ``flag`` column = none flagged. Pairs that add nothing over
    their best single (``collapsed_into``) are left out of the first two: their single's row names
    them (:func:`_collapsed_notes`)."""
    flagged = (table["flag"].fillna("").astype(str) != "") if "flag" in table.columns \
        else pd.Series(False, index=table.index)
    mech = table["intervention"].astype(str).str.contains("silence:", regex=False)
    collapsed = (table["collapsed_into"].fillna("").astype(str) != "") if "collapsed_into" in table.columns \
        else pd.Series(False, index=table.index)
    return table[~flagged & ~mech & ~collapsed], table[~flagged & mech & ~collapsed], table[flagged]


def main_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the report's main table, in rank order: unflagged genes, compounds and their pairs
    (no entity silence, no pair that adds nothing over its best single)."""
    return _split_flagged(table)[0]


def _collapsed_notes(table: pd.DataFrame) -> dict[str, str]:
    """Single label -> "+N pairs add nothing (A+B, …)" for the unflagged pairs collapsed into it."""
    if "collapsed_into" not in table.columns:
        return {}
    ok = table["flag"].fillna("").astype(str) == "" if "flag" in table.columns else pd.Series(True, index=table.index)
    part = table[ok & (table["collapsed_into"].fillna("").astype(str) != "")]
    notes = {}
    for single, rows in part.groupby("collapsed_into", sort=False):
        labs = list(rows["intervention"].astype(str))
        notes[str(single)] = (f"+{len(labs)} pair{'s' if len(labs) > 1 else ''} adding nothing over it: "
                              f"{', '.join(labs[:3])}{' …' if len(labs) > 3 else ''}")
    return notes


def fit_failure(model: Any) -> str | None:
    """The red-banner text when the model's training fit check failed (``meta['training_fit']``), else None."""
    from bioworld.train.fit_check import WEAK_FIT_RATIO

    meta = getattr(model, "meta", None) if model is not None else None
    fit = meta.get("training_fit") if isinstance(meta, Mapping) else None
    if not isinstance(fit, Mapping):
        return None
    try:
        ratio = float(fit.get("strong_median_magnitude_ratio", float("nan")))
    except (TypeError, ValueError):
        return None
    if not math.isfinite(ratio) or ratio >= WEAK_FIT_RATIO:
        return None
    strong = ", ".join(str(s) for s in list(fit.get("strong_effects", []))[:4])
    return (f"The training fit check failed: this model reproduces its strongest training effects ({strong}) at only "
            f"{ratio:.2f} of their observed size (expected at least {WEAK_FIT_RATIO}). Its rankings may miss strong "
            "effects; retrain with another seed or a seed ensemble before acting on them.")


def _readout_genes(result: Any, model: Any) -> list[str]:
    """The goal entity's panel genes (for marking the heatmap), when the model is given."""
    direction, _, target = str(getattr(result, "goal", "")).partition(":")
    names = list(getattr(model, "entity_names", []) or []) if model is not None else []
    memb = getattr(model, "membership", None)
    if direction not in ("down", "up") or target not in names or memb is None:
        return []
    row = np.asarray(memb)[names.index(target)]
    return [g for g, w in zip(getattr(model, "genes", []), row) if w]


def _methods(result: Any, model: Any) -> dict[str, Any]:
    """The methods section: data hash, configs, knowledge sources and licences, search settings."""
    import json

    prov = dict(getattr(result, "provenance", {}) or {})
    rows: list[tuple[str, str]] = []
    knowledge: list[dict[str, str]] = []
    configs: list[tuple[str, str]] = []
    if model is not None and not hasattr(model, "members"):
        meta = getattr(model, "meta", {}) or {}
        h = meta.get("data_hash")
        if not h and isinstance(getattr(model, "_X", None), np.ndarray):
            from bioworld.report.card import data_hash

            h = data_hash(model._X, model._labels)
        rows.append(("training data hash", str(h) if h else "not recorded (a model saved before data hashes)"))
        reg = getattr(model, "registration", None)
        if reg is not None:
            pkey = meta.get("perturbation_key") or getattr(reg, "perturbation_key", None) or "?"
            rkey = meta.get("replicate_key") or getattr(model, "replicate_key", None) or "none"
            rows.append(("registration", f"input {getattr(reg, 'input', '?')}, perturbation key {pkey}, replicate key "
                                         f"{rkey}"))
        desc = model.describe() if hasattr(model, "describe") else {}
        if desc.get("entity_hash"):
            rows.append(("entity definitions hash", str(desc["entity_hash"])))
        for name, cfg in (("training config (TrainConfig)", getattr(model, "train_config", None)),
                          ("model config (JEPAConfig)", getattr(model, "model_config", None))):
            if cfg is not None and hasattr(cfg, "to_dict"):
                configs.append((name, json.dumps(cfg.to_dict(), sort_keys=True, indent=1, default=str)))
        from bioworld.report.card import knowledge_licences

        knowledge = knowledge_licences(model)
    else:
        rows.append(("model", "not given to the report: data hash, configs and knowledge sources not shown"))
    knowledge += _planner_knowledge(prov.get("knowledge_read") or [], {k["name"] for k in knowledge})
    for key, label in (("screen", "search: screen"), ("interval", "intervals"), ("guard", "tautology guard"),
                       ("pair_collapse", "pairs collapsed"), ("scale", "prediction scale")):
        if prov.get(key):
            rows.append((label, str(prov[key])))
    if "n_by_kind" in prov:
        rows.append(("candidates by kind", ", ".join(f"{k} {v:,}" for k, v in prov["n_by_kind"].items())))
    if prov.get("compounds"):
        rows.append(("compounds", str(prov["compounds"])))
    if prov.get("compounds_not_scored_text"):
        rows.append(("compounds not scored", str(prov["compounds_not_scored_text"])))
    if prov.get("compounds_same_action_text"):
        rows.append(("compounds sharing a row", str(prov["compounds_same_action_text"])))
    return {"rows": rows, "configs": configs, "knowledge": knowledge}


def _planner_knowledge(names: list[str], shown: set[str]) -> list[dict[str, str]]:
    """Rows of the knowledge table for the sources the planner read itself (its prior, ``network_path``, compound
    targets) and the model's list does not already hold."""
    from bioworld.knowledge._sources import source_records

    rows = []
    for rec in source_records([n for n in names if n not in shown]):
        lic = str(rec["licence"]) + (" — non-commercial use only" if rec.get("non_commercial") else "")
        rows.append({"name": str(rec["name"]), "source": f"planner: {rec['description']} ({rec['version']})",
                     "licence": lic})
    return rows


def _breakable(text: Any) -> Any:
    """Escaped text that may wrap after ``_``, ``+`` and ``,`` (long entity / intervention names)."""
    from markupsafe import Markup, escape

    out = str(escape(str(text)))
    for sep in ("_", "+", ","):
        out = out.replace(sep, sep + "<wbr>")
    return Markup(out)


def _accuracy_of(accuracy: Any, model: Any) -> tuple[pd.DataFrame | None, str]:
    """Held-out accuracy (given, or the model's own evaluation, or none) and where it comes from."""
    if accuracy is None:
        own = model_accuracy(model)
        if own is None:
            return None, ""
        return load_accuracy(own), ("this model's own evaluation on held-out data "
                                    "(bioworld evaluate; evaluation.csv in the model folder)")
    source = str(accuracy) if isinstance(accuracy, (str, os.PathLike)) else "a table given by the caller"
    return load_accuracy(accuracy), source


#: Interventions in the per-cell score distributions (at most; fewer with a smaller ``top_n``).
PER_CELL_ROWS = 12


def _check_report_args(model: Any, top_n: Any) -> None:
    """``model`` is a trained model or ensemble (a folder path would be silently ignored: no fit banner, no training
    details); ``top_n`` a whole number >= 1 (``head(-1)`` would show every row but the last)."""
    if model is not None and not (hasattr(model, "describe") or hasattr(model, "members")):
        raise BioworldError(
            f"model is {model!r:.60} ({type(model).__name__}); expected the trained bioworld.WorldModel (or Ensemble) "
            "that answered, or None. Fix: load the folder first: model=bw.WorldModel.load(path)")
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 1:
        raise BioworldError(f"top_n={top_n!r}; expected a whole number >= 1 of interventions to plot. Fix: pass e.g. "
                            "top_n=20")


#: describe() fields that identify the model an answer came from (sizes, entities, training labels, seed).
_IDENTITY = ("n_genes", "entity_hash", "input", "train_labels", "holdout", "seed")


def _check_same_model(result: Any, counterfactuals: Any, model: Any) -> None:
    """The ranking, the counterfactuals and ``model`` come from one model: a report mixing two (a notebook's
    ``wm`` and ``wm2``) would show one model's ranking with another's provenance, fit banner and accuracy."""
    if model is None or hasattr(model, "members") or not hasattr(model, "describe"):
        return
    mine = model.describe()
    cf_uns = getattr(counterfactuals, "uns", {}).get("bioworld", {}) if hasattr(counterfactuals, "uns") else {}
    for what, desc in (("result", (getattr(result, "provenance", {}) or {}).get("model")),
                       ("counterfactuals", cf_uns.get("model") if hasattr(cf_uns, "get") else None)):
        if not isinstance(desc, Mapping):
            continue
        differ = [k for k in _IDENTITY if k in desc and k in mine and _plain(desc[k]) != _plain(mine[k])]
        if differ:
            raise BioworldError(
                f"{what} came from another model than model= (they differ in {', '.join(differ)}: e.g. "
                f"{differ[0]} {_plain(desc[differ[0]])!r:.80} vs {_plain(mine[differ[0]])!r:.80}); expected the answers "
                "and the model of one report to be the same. Fix: pass the model that answered (model=wm for "
                "wm.prioritize / wm.counterfactual)")


def _plain(v: Any) -> Any:
    return [str(x) for x in v] if isinstance(v, (list, tuple, np.ndarray)) else v


def _figures(result: Any, table: pd.DataFrame, model: Any, top_n: int) -> list[dict[str, str]]:
    """The report's plots (title, caption, embedded PNG)."""
    from bioworld.report import plots

    top_labels = list(table["intervention"].head(top_n))
    figures = [
        {"title": "Effect of the top interventions",
         "caption": "Mean goal score over cells, best at the top; whiskers = 95% interval. Blue = gene knockouts, green = compounds, grey = entity silences (mechanisms), orange = pairs; rows acting on the goal's own readout come last. "
                    "Long names are abbreviated in the plots: H_ = HALLMARK_, "
                    "sil: = silence:.",
         "src": _png(plots.effect_bars(table, top_n=top_n))},
        {"title": "Entity propagation",
         "caption": "How far each top intervention moves each entity's latent (units of that slot's spread over "
                    "control cells). Columns = the most-moved entities.",
         "src": _png(plots.entity_heatmap(result.entity_shift, top_labels[:15]))},
        {"title": "Gene × intervention: predicted changes",
         "caption": "Mean predicted change of each gene (standardised expression, units of the control cells' sd; "
                    "red = up, blue = down) under the best unflagged interventions (rows, in rank order), on the "
                    "screen's prototype cells; columns = the genes they move most; * = a gene of the goal's "
                    "readout entity; circled = the intervention's own target gene (its own transcript, left out of "
                    "the colour range, which it would otherwise set alone).",
         "src": _png(plots.gene_heatmap(getattr(result, "gene_delta", None), highlight=_readout_genes(result, model)))},
        {"title": "Per-cell scores",
         "caption": "Distribution of the score over the individual cells: a wide spread means the effect "
                    "depends on the cell's state.",
         "src": _png(plots.per_cell_distributions(result.per_cell_scores, order=list(table["intervention"]),
                                                  top_n=min(top_n, PER_CELL_ROWS)))},
        {"title": "Pair synergy",
         "caption": "Score of a pair of silenced entities minus the sum of the two singles: red = more than "
                    "additive, blue = less (redundant).",
         "src": _png(plots.pair_synergy_matrix(result.pair_synergy))},
    ]
    tr = getattr(model, "train_result", None) if model is not None else None
    if tr is not None and tr.history:
        steps = [int(h.get("step", 0)) for h in tr.history]
        recorded = (f"over the {tr.steps} training steps" if steps and min(steps) <= max(10, tr.steps // 20)
                    else f"for the recorded steps {min(steps)}–{max(steps)} of {tr.steps} (the saved model keeps "
                         "only the last records of its training history)")
        figures.append({"title": "Training curves",
                        "caption": f"Loss terms and the latent-collapse monitor {recorded}.",
                        "src": _png(plots.training_curves(tr.history))})
    return figures


# ------------------------------------------------------------------------------------ entry
def write_report(
    result: Any,
    out_dir: str | os.PathLike,
    *,
    counterfactuals: Any = None,
    accuracy: pd.DataFrame | str | os.PathLike | None = None,
    title: str | None = None,
    model: Any = None,
    top_n: int = 20,
) -> Path:
    """Write ``<out_dir>/report.html`` (self-contained) and ``<out_dir>/ranked_interventions.csv``.

    Parameters
    ----------
    result
        A :class:`bioworld.query.PrioritizationResult` (``WorldModel.prioritize``).
    out_dir
        Folder to write to (created).
    counterfactuals
        The AnnData of ``WorldModel.counterfactual`` (or a dict intervention -> list of
        ``{entity, shift, share}``): each intervention's entities ordered by shift.
    accuracy
        Held-out accuracy: a DataFrame ``method, metric, value[, sd]`` (or a benchmark summary /
        an ``evaluation.csv`` / its CSV path). ``None``: the model's own held-out table
        (:func:`model_accuracy`: ``model.evaluation``, from ``bioworld evaluate``); without one the
        report says that the ranking is unvalidated.
    title
        Page title (default: from the goal).
    model
        The :class:`bioworld.WorldModel` that answered (optional): adds its training curves,
        training details and data findings to the report.
    top_n
        Interventions in the effect plot and (at most 12) in the per-cell distributions (the table shows 30,
        the CSV all).

    Returns
    -------
    Path of ``report.html``.
    """
    from bioworld.report import plots

    table = getattr(result, "table", None)
    if not isinstance(table, pd.DataFrame) or "intervention" not in table.columns or "score" not in table.columns:
        raise BioworldError(
            f"result is a {type(result).__name__} without a ranked table; expected a PrioritizationResult "
            "from WorldModel.prioritize (table with columns intervention, score, ...)"
        )
    _check_report_args(model, top_n)
    _check_same_model(result, counterfactuals, model)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BioworldError(f"out_dir {str(out)!r} is a file; expected a folder for report.html. Fix: choose another path.")
    # everything is rendered first and written at the end, all-or-nothing: a failure on the way
    # (a plot, the template, a full disk) leaves no half-made report folder

    acc, accuracy_source = _accuracy_of(accuracy, model)
    upstream, mechanisms, flagged = _split_flagged(table)
    notes = _collapsed_notes(table)
    figures = _figures(result, table, model, top_n)
    accuracy_view = None
    accuracy_fig = None
    if acc is not None and len(acc):
        accuracy_view = _accuracy_view(acc)
        accuracy_fig = _png(plots.accuracy_bars(acc))

    csv_text = csv_safe(table).to_csv(index=False)
    html = _render(
        title=title or f"bioworld: interventions for {result.goal}",
        goal=result.goal,
        goal_words=goal_in_words(result.goal),
        provenance=_provenance(result, model),
        ranked=_ranked_rows(upstream, TABLE_ROWS, notes),
        flagged=_ranked_rows(flagged, TABLE_ROWS),
        mechanisms=_ranked_rows(mechanisms, TABLE_ROWS, notes),
        n_collapsed=sum(1 for v in (table.get("collapsed_into", pd.Series(dtype=str)).fillna("").astype(str)) if v),
        methods=_methods(result, model),
        n_mechanisms=len(mechanisms),
        n_flagged=len(flagged),
        n_ranked=len(table),
        n_shown=min(TABLE_ROWS, len(upstream)),
        fit_banner=fit_failure(model),
        csv_name=CSV_NAME,
        figures=figures,
        counterfactuals=_counterfactual_view(counterfactuals),
        accuracy=accuracy_view,
        accuracy_fig=accuracy_fig,
        accuracy_source=accuracy_source,
        holdout=list((getattr(result, "provenance", {}) or {}).get("model", {}).get("holdout", [])),
        compounds_note=str((getattr(result, "provenance", {}) or {}).get("compounds", "")),
        compounds_not_scored=str((getattr(result, "provenance", {}) or {}).get("compounds_not_scored_text", "")),
        compounds_same_action=str((getattr(result, "provenance", {}) or {}).get("compounds_same_action_text", "")),
    )
    from bioworld._atomic import write_files

    path = out / REPORT_NAME
    write_files([(out / CSV_NAME, _text_writer(csv_text)), (path, _text_writer(html))], what="report file")
    return path


def _text_writer(text: str):
    return lambda tmp: Path(tmp).write_text(text, encoding="utf-8")


def _render(**context: Any) -> str:
    """The report template rendered with ``context`` (autoescaped, undefined names are errors)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["breakable"] = _breakable
    return env.get_template("report.html.j2").render(**context)


#: First characters that make a spreadsheet read a cell as a formula (CSV / formula injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_safe(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` whose text cells cannot run as spreadsheet formulas.

    A text cell (not a number) starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return
    (or their full-width forms) gets a leading apostrophe, as OWASP recommends for CSV files opened
    in Excel / LibreOffice / Sheets; numbers, including negative ones, are written unchanged.
    """
    out = table.copy()
    for col in out.columns:
        if out[col].dtype != object and not isinstance(out[col].dtype, pd.CategoricalDtype) \
                and not pd.api.types.is_string_dtype(out[col].dtype):
            continue
        out[col] = [("'" + v) if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v
                    for v in out[col].astype(object)]
    safe_names = [("'" + c) if isinstance(c, str) and c.startswith(FORMULA_STARTS) else c for c in out.columns]
    out.columns = safe_names
    return out
