"""The model card: ``README.md`` in a model folder, written by ``WorldModel.save``.

It says what the model was trained on (data hash, registration, entities), with which settings
(model and training config), how well it fits its training effects, how it scored on held-out data
(``evaluation.csv`` written by ``bioworld evaluate``; "not evaluated" otherwise) and under which
licences the knowledge it read may be used.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["CARD", "ENTITY_LICENCES", "data_hash", "knowledge_licences", "model_card", "write_model_card"]

CARD = "README.md"
#: Bundled entity / feature sources -> (what, licence), as listed in ``bioworld/_data/README.md``.
ENTITY_LICENCES: dict[str, tuple[str, str]] = {
    "hallmark": ("MSigDB Hallmark v7.0 gene sets (genesets/msigdb_hallmark_h.all.v7.0.symbols.gmt)", "CC BY 4.0"),
    "progeny": ("PROGENy human top-500 footprints, Bioconductor progeny 1.20 (genesets/progeny_human_top500.tsv)",
                "Apache-2.0"),
    "reactome": ("Reactome 2021 pathways (genesets/reactome_pathways_2021_hs.gmt)", "CC BY 4.0"),
    "go_bp": ("GO Biological Process, org.Hs.eg.db 3.16 / GO.db 2022-07 "
              "(genesets/go_bp_propagated_orgHsEgDb_3.16_size10-500.gmt)", "CC BY 4.0"),
    "dorothea": ("DoRothEA human regulons, saezlab (networks/dorothea_hs_regulons.tsv.gz)", "GPL-3"),
    "nmf": ("NMF programs fitted on the training data itself", "derived from the training data"),
}
#: Bundled collections every model reads for its gene features (``_world_model.FEATURE_SOURCES``).
GENE_FEATURE_SOURCES = ("hallmark", "progeny", "dorothea", "go_bp")


def data_hash(X: Any, labels: Sequence[Any]) -> str:
    """SHA-256 of the training matrix (as trained on) and its perturbation labels, ``sha256:<hex>``."""
    h = hashlib.sha256()
    arr = np.ascontiguousarray(np.asarray(X))
    h.update(str(arr.dtype).encode() + str(arr.shape).encode())
    h.update(memoryview(arr).cast("B"))
    h.update("\x1f".join(str(v) for v in labels).encode())
    return "sha256:" + h.hexdigest()


def knowledge_licences(model: Any) -> list[dict[str, str]]:
    """``{name, source, licence}`` of every knowledge source the model read.

    The entity sources of its slots (bundled ones with their licence; the user's own files as
    "user-supplied"), the bundled sets behind the gene features, and whatever the knowledge layer
    recorded in ``meta['knowledge_sources']``.
    """
    rows: list[dict[str, str]] = []
    seen: set[str] = set()

    def add(name: str, source: str, licence: str) -> None:
        if name not in seen:
            seen.add(name)
            rows.append({"name": name, "source": source, "licence": licence})

    sources = []
    for e in getattr(model, "entity_set", []) or []:
        s = str(getattr(e, "source", ""))
        if s and s not in sources:
            sources.append(s)
    for s in sources:
        what, lic = ENTITY_LICENCES.get(s, (f"user-supplied entity file '{s}'", "as given by its provider"))
        add(s, f"entity slots: {what}", lic)
    for s in GENE_FEATURE_SOURCES:
        what, lic = ENTITY_LICENCES[s]
        add(s, f"gene features: {what}", lic)
    meta = getattr(model, "meta", {}) or {}
    for k in meta.get("knowledge_sources", []) or []:
        if isinstance(k, Mapping):
            what = k.get("source") or k.get("description") or k.get("file") or ""
            if k.get("version"):
                what = f"{what} ({k['version']})"
            lic = str(k.get("licence", k.get("license", "not stated")))
            if k.get("non_commercial"):
                lic += " — non-commercial use only"
            add(str(k.get("name", "")), str(what), lic)
    if getattr(model, "smiles", None):
        add("compound structures", "SMILES table joined on compound ids (e.g. the bundled LINCS table, chemCPA)",
            "MIT (bundled table); your own table: its terms")
    return rows


def _fmt(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"


def _evaluation_table(ev: pd.DataFrame) -> list[str]:
    metrics = list(dict.fromkeys(ev["metric"].astype(str)))
    lines = ["| split | method | n | " + " | ".join(metrics) + " |", "|---|---|---:|" + "---:|" * len(metrics)]
    for (split, method), part in ev.groupby(["split", "method"], sort=False):
        cells = part.set_index("metric")
        vals = []
        for m in metrics:
            if m in cells.index:
                mu, sd = cells.loc[m, "mean"], cells.loc[m, "sd"]
                vals.append(_fmt(mu) + (f" ± {_fmt(sd)}" if pd.notna(sd) else ""))
            else:
                vals.append("")
        name = f"**{method}**" if method == "WorldModel" else str(method)
        lines.append(f"| {split} | {name} | {int(cells['n'].max())} | " + " | ".join(vals) + " |")
    return lines


def model_card(model: Any, *, evaluation: pd.DataFrame | None = None) -> str:
    """The model card's markdown for a trained :class:`bioworld.WorldModel`."""
    from bioworld._version import __version__

    reg = model.registration
    meta = dict(getattr(model, "meta", {}) or {})
    tr = getattr(model, "train_result", None)
    train_labels = [t for t in model.train_labels if t != model.control]
    lines = [
        "# bioworld model card",
        "",
        f"Written by bioworld {__version__} on "
        f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Load with "
        "`bioworld.WorldModel.load(<this folder>)`; weights in `model.safetensors`, everything else in "
        "`bioworld.json` (no pickled code).",
        "",
        "## Training data",
        "",
        f"- data hash: `{meta.get('data_hash', 'not recorded (trained from backed data, or by an older version)')}` "
        "(SHA-256 of the expression matrix as trained on + the perturbation labels)",
        f"- {reg.n_cells:,} {reg.obs_unit} x {reg.n_genes:,} genes, input `{reg.input}`, labels in "
        f"`obs['{reg.perturbation_key}']`, control `{reg.control}` ({reg.control_n_cells:,} {reg.obs_unit})",
        f"- {len(train_labels)} training perturbations: {', '.join(train_labels[:20])}"
        + (" …" if len(train_labels) > 20 else ""),
        f"- held out of training: {', '.join(model.holdout) if model.holdout else 'none'}",
    ]
    if reg.dropped:
        lines.append(f"- set aside (fewer than {reg.min_cells_per_group} cells): {', '.join(list(reg.dropped)[:10])}")
    for f in list(getattr(model, "findings", []) or [])[:6]:
        lines.append(f"- finding: {f}")
    lines += ["", "## Entities", "",
              f"{len(model.entity_names)} entity slots, definitions hash `{model.entity_set.hash()[:16]}…`: "
              f"{', '.join(model.entity_names[:12])}{' …' if len(model.entity_names) > 12 else ''}", ""]
    lines += ["## Configuration", "", "```json",
              json.dumps({"model_config": model.model_config.to_dict(), "train_config": model.train_config.to_dict()},
                         indent=1, sort_keys=True, default=str),
              "```", ""]
    lines += ["## Training fit", ""]
    if tr is not None:
        lines.append(f"- {tr.steps} steps in {tr.wall_s:.1f} s ({tr.cells_per_s:,.0f} cells/s), seed "
                     f"{model.train_config.seed}")
    fit = meta.get("training_fit")
    if isinstance(fit, Mapping):
        lines.append(f"- reproduces its training effects (top-20 genes, {fit.get('n_perturbations')} perturbations): "
                     f"median Pearson {_fmt(fit.get('median_pearson_top20'))}; strongest effects "
                     f"({', '.join(map(str, list(fit.get('strong_effects', []))[:4]))}) at "
                     f"{_fmt(fit.get('strong_median_magnitude_ratio'), 2)} of their observed size")
    elif tr is None:
        lines.append("- not trained in this process (no training record)")
    else:
        lines.append("- training fit not measured (backed data, or trained by an older version)")
    lines += ["", "## Held-out accuracy", ""]
    if evaluation is not None and len(evaluation):
        notes = evaluation.attrs.get("notes", []) if hasattr(evaluation, "attrs") else []
        lines += ["From `bioworld evaluate` (`evaluation.csv`; per perturbation: `evaluation_scores.csv`); mean ± sd "
                  "over perturbations. `unseen` = perturbations the model never trained on.", ""]
        lines += _evaluation_table(evaluation)
        lines += [""] + [f"- {n}" for n in notes]
    else:
        lines.append("Not evaluated: nothing here shows how well this model predicts perturbations it has not seen. "
                     "Run `bioworld evaluate <this folder> --data TEST.h5ad` on held-out cells "
                     "(`bioworld.eval.evaluate` in Python); its table is then shown here and in reports.")
    lines += ["", "## Knowledge used and licences", "",
              "A model inherits the terms of the knowledge it was built from (non-commercial and share-alike "
              "terms included).", "", "| name | what | licence |", "|---|---|---|"]
    for k in knowledge_licences(model):
        lines.append(f"| {k['name']} | {k['source']} | {k['licence']} |")
    lines.append("")
    return "\n".join(lines)


def write_model_card(model: Any, directory: str | os.PathLike, *, evaluation: pd.DataFrame | None = None) -> Path:
    """Write ``<directory>/README.md`` (atomically). ``evaluation`` defaults to the folder's
    ``evaluation.csv`` when there is one."""
    d = Path(directory)
    if evaluation is None:
        from bioworld.report._evaluation import load_evaluation

        evaluation = load_evaluation(d)
    text = model_card(model, evaluation=evaluation)
    from bioworld._atomic import write_text

    return write_text(d / CARD, text, what="model card")
