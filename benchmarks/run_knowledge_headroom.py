"""Is there signal in the knowledge for the bundled screens? -> benchmarks/results/knowledge/HEADROOM.md

    python benchmarks/run_knowledge_headroom.py

No model is trained. For every pair of perturbations of a screen, the similarity of their knowledge
features (:class:`bioworld.knowledge.KnowledgeBase`; per block and all together; for L1000 also the
Jaccard overlap of the compounds' target sets) is compared with the correlation of their observed
effects (centred on the mean effect, so that "every perturbation does the common thing" does not
count). If knowledge-similar perturbations do not have correlated effects, no model that reads the
knowledge can predict an unseen perturbation better than the mean of the seen ones.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pairs(features: np.ndarray, effects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    e = effects - effects.mean(0, keepdims=True)
    r = np.corrcoef(e)
    iu = np.triu_indices(len(f), 1)
    return (f @ f.T)[iu], r[iu]


def _rows(name: str, kb, feats: np.ndarray, effects: np.ndarray, extra: dict | None = None) -> list[str]:
    from bioworld.knowledge import BLOCKS

    cfg = kb.config
    cuts = {"network": (0, cfg.network_dim), "signed": (cfg.network_dim, cfg.network_dim + cfg.signed_dim),
            "signature": (cfg.network_dim + cfg.signed_dim, cfg.dim - len(BLOCKS)), "all blocks": (0, cfg.dim - len(BLOCKS))}
    out = []
    for block, (a, b) in cuts.items():
        s, r = _pairs(feats[:, a:b], effects)
        ok = np.isfinite(s) & np.isfinite(r) & (s != 0)
        rho = spearmanr(s[ok], r[ok])[0] if ok.sum() > 3 else float("nan")
        top = r[ok][s[ok] >= np.quantile(s[ok], 0.9)].mean() if ok.sum() > 10 else float("nan")
        out.append(f"| {name} | {block} | {ok.sum()} | {rho:+.3f} | {top:+.3f} | {r[ok].mean():+.3f} |")
    for label, (s, r) in (extra or {}).items():
        ok = np.isfinite(r)
        rho = spearmanr(s[ok], r[ok])[0]
        out.append(f"| {name} | {label} | {ok.sum()} | {rho:+.3f} | {r[ok][s[ok] > 0].mean():+.3f} | {r[ok].mean():+.3f} |")
    return out


def main() -> int:
    warnings.simplefilter("ignore")
    from bioworld.data import load_l1000, normalize, register
    from bioworld.eval.benchmark import mean_deltas, papalexi_deltas
    from bioworld.knowledge import KnowledgeBase

    kb = KnowledgeBase()
    lines = ["# Knowledge headroom on the bundled screens", "", "Command: `python benchmarks/run_knowledge_headroom.py`",
             "", __doc__.split("\n\n")[2].replace("\n", " "), "",
             "Columns: pairs compared; Spearman between knowledge similarity and effect correlation; mean effect "
             "correlation of the 10% most knowledge-similar pairs (for Jaccard: pairs sharing a target); mean over all "
             "pairs.", "", "| screen | knowledge | pairs | Spearman | top-10% pairs' effect r | all pairs' r |",
             "|---|---|---:|---:|---:|---:|"]
    # Papalexi: 20 gene knockouts
    _, _, _, obs, _ = papalexi_deltas()
    genes = sorted(obs)
    f, _ = kb.gene_features(genes)
    lines += _rows("Papalexi (20 KOs)", kb, f, np.stack([obs[g] for g in genes]))
    # L1000: compounds, mean of each compound's two highest doses
    a = load_l1000()
    kw = dict(perturbation_key="perturbation", control="control", input="log", dose_key="pert_dose",
              compound_id_key="pert_id", min_cells_per_group=1)
    reg = register(a, **kw)
    deltas, _ = mean_deltas(normalize(a, reg), a.obs["perturbation"].astype(str).to_numpy(), "control")
    by_cmp: dict[str, list[tuple[float, np.ndarray]]] = {}
    for lab, d in deltas.items():
        name, _, dose = lab.rpartition("@")
        by_cmp.setdefault(name, []).append((float(dose), d))
    names = sorted(n for n in by_cmp if kb.knows_compound(n))
    eff = np.stack([np.mean([d for _, d in sorted(by_cmp[n])[-2:]], axis=0) for n in names])
    fc, _ = kb.compound_features(names)
    targets = [set(kb.compound_targets(n)) for n in names]
    jac = np.array([[len(x & y) / max(len(x | y), 1) for y in targets] for x in targets])
    iu = np.triu_indices(len(names), 1)
    e = eff - eff.mean(0, keepdims=True)
    lines += _rows(f"L1000 A375 ({len(names)} compounds with knowledge)", kb, fc, eff,
                   {"target Jaccard": (jac[iu], np.corrcoef(e)[iu])})
    out = ROOT / "benchmarks" / "results" / "knowledge"
    out.mkdir(parents=True, exist_ok=True)
    (out / "HEADROOM.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
