"""Predictions in an atlas context: what a perturbation would do to a cell line / cell type's signature.

``predict_in_context(model, labels, context)`` answers with the pretrained atlas model
(:class:`bioworld.train.pretrain.AtlasModel`). Labels use the project's action grammar: a compound
(``trametinib``, ``trametinib@10``; any spelling the bundled alias table knows; the atlas records one
dose per signature, so a dose is accepted and reported but does not change the answer) or a gene
(``JAK2``: a knockdown, like the atlas' CRISPRi signatures). A perturbation with no signature in any
context is answered from knowledge alone (``obs['measured_elsewhere']`` is False) — and refused when
no knowledge covers it either.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from bioworld.errors import UnknownPerturbationError, user_stacklevel

__all__ = ["atlas_key", "predict_in_context"]


def atlas_key(model: Any, label: str) -> str:
    """The atlas perturbation key (``cmp:<compound>`` / ``kd:<GENE>``) of a label."""
    from bioworld.actions import parse_action
    from bioworld.knowledge import CompoundKnowledge

    text = str(label)
    hit = model.inputs.atlas.obs.loc[model.inputs.atlas.obs["perturbation"] == text, "key"]
    if len(hit):
        return str(hit.iloc[0])
    action = parse_action(text)
    if len(action.components) != 1:
        raise UnknownPerturbationError(
            f"{text!r} has {len(action.components)} components; atlas contexts are predicted for single "
            "perturbations (a compound or a gene). Fix: ask for each component separately."
        )
    p = action.components[0]
    ck = CompoundKnowledge.bundled()
    if p.kind == "compound" or (p.kind in ("ko", "kd") and ck.resolve(p.target, strict=False)):
        key = ck.resolve(p.target, strict=False)
        if key is None:
            ck.resolve(p.target)  # raises with close matches and the fix
        return f"cmp:{key}"
    if p.kind in ("ko", "kd", "act"):
        return f"kd:{p.target}"
    raise UnknownPerturbationError(
        f"{text!r} is a {p.kind} action; atlas contexts are predicted for compounds and genes only."
    )


#: Why compounds / targets given at query time (and cells) are not read in an atlas context.
CONTEXT_IGNORES = ("the atlas model answers from its own signatures and the bundled knowledge only (no cells, "
                   "structures or target tables given at query time)")


def predict_in_context(model: Any, labels: Sequence[str] | str, context: str, *,
                       unread: dict[str, Any] | None = None) -> Any:
    """Predicted signatures of ``labels`` in atlas ``context``. ``unread``: arguments of the caller that an atlas
    context does not read (name -> value); each one given (not None) is a warning.

    Returns
    -------
    AnnData with ``obs_names`` = the labels in order, ``var_names`` = the atlas gene space, ``X`` = the
    predicted signature on the atlas score scale (inverse-normal rank scores of the 500 most up and
    500 most down genes, 0 elsewhere: the atlas transform), ``layers['score']`` = the module's raw
    output, ``obs['key']``, ``obs['measured_elsewhere']`` (the perturbation has signatures in other
    contexts) and ``uns['bioworld']`` (context, model provenance).
    """
    import anndata as ad
    import pandas as pd

    from bioworld.knowledge import rank_scores

    labels = [labels] if isinstance(labels, str) else [str(x) for x in labels]
    if not labels:
        raise UnknownPerturbationError("no labels given; expected at least one perturbation to predict.")
    for name in [k for k, v in (unread or {}).items() if v is not None]:
        warnings.warn(f"{name}= is not used with context={context!r}: {CONTEXT_IGNORES}", UserWarning,
                      stacklevel=user_stacklevel())
    model.inputs.atlas.check_context(context)
    keys = [atlas_key(model, lab) for lab in labels]
    inputs = model.inputs
    measured = [k in inputs.keys and inputs.key_n[inputs.keys.index(k)] > 0 for k in keys]
    from bioworld.knowledge import BLOCKS

    if model.kfeat.shape[1]:  # the last len(BLOCKS) columns are the known bits
        has_knowledge = model.knowledge_features(keys)[:, -len(BLOCKS):].any(axis=1)
    else:
        has_knowledge = np.zeros(len(keys), bool)
    blind = [lab for lab, m, k in zip(labels, measured, has_knowledge) if not m and not k]
    if blind:
        raise UnknownPerturbationError(
            f"{blind[:5]} have no signature in any atlas context and no knowledge (targets, network, knockdown "
            "signatures); their effect cannot be predicted in an atlas context, which reads the bundled knowledge only "
            "(targets or structures given at query time are not used there). Fix: check the names, or predict "
            "without a context (CLI: leave out --context), where a compound's targets can be given."
        )
    raw = model.predict(keys, context)
    obs = inputs.atlas.obs
    n_ranked = int(np.median(obs.loc[obs["context"] == context, "n_ranked"]))
    up_only = bool((obs.loc[obs["context"] == context, "ranked_sides"] == "up_only").all())
    X = np.stack([rank_scores(r, n_ranked=n_ranked, up_only=up_only) for r in raw])
    out = ad.AnnData(X=X.astype(np.float32), obs=pd.DataFrame(
        {"key": keys, "measured_elsewhere": measured, "has_knowledge": list(map(bool, has_knowledge))},
        index=pd.Index(labels, name="perturbation")), var=pd.DataFrame(index=pd.Index(model.genes, name="gene")))
    out.layers["score"] = raw.astype(np.float32)
    out.uns["bioworld"] = {"context": context, "scale": "atlas rank score (inverse-normal, top/bottom 500)",
                           "n_ranked": n_ranked, "atlas_model_seed": int(model.config.seed),
                           "atlas_sha256": str(model.meta.get("atlas_sha256", ""))}
    return out


def engine_with_compounds(engine: Any, smiles: Any = None, targets: Any = None) -> tuple[Any, dict | None]:
    """A query engine that also knows compounds given at query time (``smiles``: name -> SMILES; ``targets``:
    a ``compound, target_gene`` table path or name -> genes), and the targets to answer them with.

    A model with compound features: a copy of the engine whose action space has them (targets: None). A model
    without (trained on gene perturbations): the engine itself and ``targets`` as name -> genes, since such a
    model answers a compound as the loss of its targets (:func:`bioworld.query._candidates.as_target_losses`);
    a structure says nothing about those, so ``smiles`` is refused there."""
    import copy

    from bioworld.knowledge.compounds import target_mapping

    space = engine.space
    src = space.compounds
    if targets is not None:
        targets = target_mapping(targets)
    if src is None:
        if smiles:
            raise UnknownPerturbationError(
                f"compounds given by structure ({', '.join(sorted(smiles))}), but this model was trained on gene "
                "perturbations only: it answers a compound as the loss of its targets, which a SMILES does not "
                "name. Fix: give the targets instead (compound_targets={name: [genes]} (CLI: --compound-targets "
                "TABLE)), or train on data with compounds.")
        return engine, targets
    if not hasattr(src, "with_new"):
        raise UnknownPerturbationError(
            "this model was trained without knowledge-grounded compound features, so it cannot take new compounds "
            "at query time. Fix: retrain with knowledge on (the default) on data with compounds."
        )
    new_space = copy.copy(space)
    new_space.compounds = src.with_new(smiles=smiles, targets=targets, gene_rows=space.genes)
    new_engine = copy.copy(engine)
    new_engine.space = new_space
    return new_engine, None
