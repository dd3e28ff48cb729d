"""``bw.WorldModel``: the one class that ties data, entities, actions, model, training and queries.

>>> import bioworld as bw
>>> adata = bw.data.load_papalexi()
>>> wm = bw.WorldModel(adata, perturbation_key="perturbation", control="control")
>>> wm.train()
>>> pred = wm.predict(["IFNGR1", "STAT1+IRF1"])     # AnnData: X = predicted mean, layers['delta']
>>> wm.save("model_dir"); wm2 = bw.WorldModel.load("model_dir")
"""

from __future__ import annotations

import os
from itertools import combinations as itertools_combinations
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import torch

from bioworld.errors import BioworldError, CheckpointError, DataValidationError, UnknownPerturbationError

#: Observation columns tried (in order) as the pairing context when no replicate key is given.
REPLICATE_CANDIDATES = ("replicate", "bio_rep", "batch", "gem_group", "plate", "det_plate")
#: Number of control cells kept in the model directory as the default starting population.
N_REFERENCE_CELLS = 512
INACTIVE_QUANTILE = 0.01  # "off" = the entity's activity in the lowest 1% of reference cells
FIT_CHECK_PERTURBATIONS = 64  # training perturbations (most cells first) re-predicted after training
WEAK_FIT_RATIO = 0.25  # warn when strong training effects come back below this share of their size
# (Papalexi, 400 steps, all 20 targets: training seed 0 -> 0.06, a failed run; seed 1 -> 0.48)
BACKED_SUBSAMPLE = 20000  # cells read from a backed AnnData to fit the NMF programs
#: Gene-feature sources for genetic targets (knowledge that lets unseen targets be predicted).
FEATURE_SOURCES = ("hallmark", "progeny", "dorothea", "go_bp")
GENE_FEATURE_DIM = 64
_FEATURE_CACHE: dict[str, "_GeneFeatures"] = {}


def _as_entity_set(entities: Any):
    from bioworld.entities import EntitySet, default_entities

    if entities is None:
        return default_entities()
    if isinstance(entities, EntitySet):
        return entities
    if isinstance(entities, (str, os.PathLike)):
        entities = [entities]
    sets = []
    for item in entities:
        if isinstance(item, EntitySet):
            sets.append(item)
            continue
        p = Path(item)
        kind = Path(p.name.lower().removesuffix(".gz")).suffix  # x.gmt.gz / x.tsv.gz are read decompressed
        if kind == ".gmt":
            sets.append(EntitySet.from_gmt(p))
        elif kind in (".tsv", ".txt", ".csv"):
            sets.append(EntitySet.from_weight_table(p))
        else:
            raise BioworldError(
                f"entities file {str(p)!r} has an unknown type; expected a .gmt gene-set file or a "
                ".tsv weight table with columns gene, pathway, weight (either may be gzip-compressed: .gmt.gz, .tsv.gz)"
            )
    out = sets[0]
    return out.combine(*sets[1:], on_clash="prefix") if len(sets) > 1 else out


class _GeneFeatures:
    """Frozen feature table of :class:`bioworld.actions.GeneFeaturizer` (entity/regulon/GO membership, SVD).

    Built once from bundled knowledge (+ the model's own entities) and stored in the checkpoint as a
    tensor, so an unseen gene has a representation whenever any of those sets contains it.
    """

    def __init__(self, genes: list[str], table: np.ndarray) -> None:
        self.genes = list(genes)
        self.table = table.astype(np.float32)
        self.pos = {g: i for i, g in enumerate(self.genes)}

    @classmethod
    def build(cls, entity_sets: list, dim: int = GENE_FEATURE_DIM, seed: int = 0) -> "_GeneFeatures":
        from bioworld.actions import GeneFeaturizer

        feat = GeneFeaturizer(entity_sets[0], extra_sets=entity_sets[1:], dim=dim, seed=seed)
        genes = list(feat.genes)
        return cls(genes, feat.features(genes))

    def knows(self, gene: str) -> bool:
        return gene in self.pos

    def __call__(self, genes: list[str]) -> np.ndarray:
        return np.stack([self.table[self.pos[g]] for g in genes])


class WorldModel:
    """An entity-slot, action-conditioned JEPA fitted to one AnnData.

    Parameters
    ----------
    adata
        Cells x genes. Raw counts (``input="counts"``) or log-scale values (``input="log"``).
        A *backed* AnnData (``bw.data.open_backed(path)`` / ``anndata.read_h5ad(path,
        backed="r")``) is trained out of core: ``X`` stays on disk, statistics are computed in one
        streaming pass, NMF programs are fitted on a seeded subsample of ``BACKED_SUBSAMPLE`` cells
        and batches come from a block buffer (``TrainConfig.block_size``, ``buffer_blocks``,
        ``buffer_refresh``, ``resident_controls``; see
        :class:`bioworld.data.collate.BlockBufferSampler`).
    entities
        An :class:`~bioworld.entities.EntitySet`, a GMT / weight-table path, or a list of them.
        Default: bundled MSigDB Hallmark + PROGENy. Panel genes no entity covers get data-driven
        NMF programs (``nmf_programs``).
    perturbation_key, control
        ``obs`` column of perturbation labels (action grammar, see :mod:`bioworld.actions`) and the
        control label in it.
    dose_key, compound_id_key, smiles
        For compound data: dose column, compound-id column (joined to the SMILES table on its
        first 13 characters, LINCS style) and a SMILES source (path to a CSV ``id, SMILES`` or a
        dict name -> SMILES). Without SMILES, compounds cannot be generalised to.
    gene_symbols_key
        ``var`` column holding gene symbols when ``var_names`` are probe/Ensembl ids.
    input
        ``"counts"`` (normalize_total 1e4 + log1p) or ``"log"`` (used as is).
    replicate_key
        ``obs`` column of the context control and perturbed cells are paired within; auto-detected
        among ``replicate, bio_rep, batch, gem_group, plate`` when not given.
    id_map
        Maps Ensembl ``var_names`` to symbols (``"auto"`` = the bundled org.Hs.eg.db table, or a
        dict); passed to :func:`bioworld.data.register`.
    holdout
        Perturbation labels never shown in training (e.g. a :class:`~bioworld.data.Split`'s test).
    config, model_config
        :class:`~bioworld.train.TrainConfig` and :class:`~bioworld.model.JEPAConfig` overrides
        (dicts of fields or the dataclasses).
    """

    def __init__(
        self,
        adata: ad.AnnData,
        *,
        entities: Any = None,
        perturbation_key: str = "perturbation",
        control: str = "control",
        dose_key: str | None = None,
        compound_id_key: str | None = None,
        smiles: str | os.PathLike | dict[str, str] | None = None,
        gene_symbols_key: str | None = None,
        input: str = "counts",
        replicate_key: str | None = None,
        id_map: Any = None,
        min_cells_per_group: int | None = None,
        min_genes_per_entity: int = 3,
        nmf_programs: int = 4,
        holdout: Iterable[str] | Any = (),
        config: Any = None,
        model_config: dict[str, Any] | None = None,
    ) -> None:
        from bioworld.actions import parse_action
        from bioworld.data import normalize, register
        from bioworld.data._backed import BackedExpression, is_backed, normalize_block, read_rows, streaming_moments
        from bioworld.entities import EntitySet, map_to_panel

        self.train_config = _train_config(config)
        from bioworld.train._threads import pin_threads

        pin_threads(self.train_config.resolved_threads())  # setup numerics (features, NMF) too
        if min_cells_per_group is None:
            min_cells_per_group = 1 if input == "log" else 3
        if replicate_key is None:
            replicate_key = next((k for k in REPLICATE_CANDIDATES if k in adata.obs.columns), None)
        self.registration = register(
            adata, perturbation_key=perturbation_key, control=control, dose_key=dose_key,
            compound_id_key=compound_id_key, gene_symbols_key=gene_symbols_key, input=input,
            replicate_key=replicate_key, min_cells_per_group=min_cells_per_group, id_map=id_map,
        )
        reg = self.registration
        self.var_names = [str(v) for v in adata.var_names]
        self.genes = list(reg.genes)  # symbols, var order
        labels = adata.obs[perturbation_key].astype(str).to_numpy()
        is_ctrl = labels == control
        backed = is_backed(adata)
        if backed:  # out of core: X stays on disk; one streaming pass for the statistics
            ctrl_mean, _, spread = streaming_moments(adata.X, reg.input, is_ctrl, progress=True)
            X = None  # a seeded subsample is read below if NMF programs need one
        else:
            X = normalize(adata, reg).astype(np.float32)

        # ---- entities -> slots (+ NMF programs for genes no entity covers)
        base = _as_entity_set(entities)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            panel = map_to_panel(base, self.genes, min_genes=min_genes_per_entity)
        self.findings: list[str] = list(reg.findings)
        if panel.dropped:
            self.findings.append(
                f"{len(panel.dropped)} entities have < {min_genes_per_entity} panel genes and are not slots: "
                + ", ".join(d.name for d in panel.dropped[:8]) + (" …" if len(panel.dropped) > 8 else "")
            )
        if nmf_programs and len(panel.uncovered_genes) >= 3 * nmf_programs:
            idx = [self.genes.index(g) for g in panel.uncovered_genes]
            if X is None:  # backed: fit the programs on a seeded subsample of cells
                sub_rng = np.random.default_rng(self.train_config.seed)
                sub = np.sort(sub_rng.choice(len(labels), size=min(BACKED_SUBSAMPLE, len(labels)), replace=False))
                X = normalize_block(read_rows(adata.X, sub), reg.input)
            nmf = EntitySet.from_nmf(np.clip(X[:, idx], 0, None), panel.uncovered_genes,
                                     n_programs=nmf_programs, seed=self.train_config.seed)
            base = base.combine(nmf, on_clash="prefix")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                panel = map_to_panel(base, self.genes, min_genes=min_genes_per_entity)
            self.findings.append(f"added {len(nmf)} NMF programs over {len(idx)} genes no entity covers")
        self.entity_set = panel.entity_set
        self.entity_names = list(panel.names)
        self.membership = panel.membership.astype(np.float32)

        # ---- normalisation: centre on control, scale by overall spread
        self.control = control
        if backed:
            self.mu = ctrl_mean
            self.sd = np.maximum(spread, 0.05).astype(np.float32)
            del X
            Xs = BackedExpression(adata.X, reg.input, self.mu, self.sd)
        else:
            self.mu = X[is_ctrl].mean(0)
            self.sd = np.maximum(X.std(0), 0.05).astype(np.float32)
            Xs = ((X - self.mu) / self.sd).astype(np.float32)

        # ---- actions
        uniq = [control] + [lab for lab in reg.perturbations]
        self.actions = {lab: parse_action(lab if lab != control else "control", control_labels=(control, "control")) for lab in uniq}
        self.holdout = sorted(set(getattr(holdout, "test", holdout)))
        unknown = [h for h in self.holdout if h not in self.actions]
        if unknown:
            raise DataValidationError(
                f"holdout labels {unknown} are not perturbations of this data; expected labels from "
                f"obs[{perturbation_key!r}] such as {uniq[1:4]}"
            )
        if control in self.holdout:
            raise DataValidationError(
                f"holdout contains the control label {control!r}; expected perturbation labels only (every effect is "
                "measured against the control cells, so they cannot be held out). Fix: remove it from the holdout "
                "(CLI: --holdout)."
            )
        kept = [lab for lab in uniq[1:] if lab not in reg.dropped]
        if kept and all(lab in self.holdout for lab in kept):
            raise DataValidationError(
                f"holdout contains all {len(kept)} perturbations of the data; expected at least one left to train on. "
                "Fix: hold out fewer labels (CLI: --holdout)."
            )
        compounds = sorted({p.target for a in self.actions.values() for p in a.components if p.kind == "compound"})
        self.smiles = _read_smiles(smiles, adata, compound_id_key, self.actions)
        if compounds and not self.smiles:
            raise DataValidationError(
                f"the data has {len(compounds)} compounds (e.g. {compounds[:3]}) but no SMILES were found for any"
                f" (smiles={'not given' if smiles is None else repr(str(smiles))}); compounds are represented by their"
                " structure. Pass smiles= a CSV 'id, SMILES' or a dict name -> SMILES (LINCS: the bundled"
                " compounds/lincs_drugs_smiles.csv with compound_id_key='pert_id')"
            )
        missing = sorted(self._compounds_without_smiles()) if self.smiles else []
        if missing:
            self.findings.append(
                f"{len(missing)} compounds have no SMILES and get no structure features (seen ones are still "
                f"learned from their dose; unseen ones cannot be predicted): {', '.join(missing[:6])}"
            )
        self._build_featurizers()
        self.train_labels = [lab for lab in uniq if lab not in self.holdout and lab not in reg.dropped]
        self.gene_bank = sorted({p.target for lab in self.train_labels for p in self.actions[lab].components
                                 if p.kind in ("ko", "kd", "act")})
        unknowable = [g for g in self.gene_bank if not self.gene_features.knows(g)]
        if unknowable:
            self.findings.append(
                f"{len(unknowable)} training targets are in no entity, regulon or GO set ({', '.join(unknowable[:6])}"
                + (" …" if len(unknowable) > 6 else "") + "): they are learned from their observed effect alone "
                "(own action embedding); unseen genes without such knowledge cannot be predicted"
            )
        mcfg = dict(
            gene_bank_size=len(self.gene_bank),
            n_genes=len(self.genes), n_entities=len(self.entity_names), gene_feature_dim=GENE_FEATURE_DIM,
            compound_feature_dim=1024 if self.smiles else 0,  # Morgan bits
            max_components=max(2, max(len(a) for a in self.actions.values())),
        )
        from bioworld.model import JEPAConfig

        tunable = {f for f in JEPAConfig.__dataclass_fields__} - set(mcfg)
        unknown = sorted(set(model_config or {}) - tunable)
        if unknown:
            raise BioworldError(
                f"unknown model_config field(s) {unknown}; expected a subset of {sorted(tunable)} "
                "(data-derived sizes are set automatically)"
            )
        mcfg.update(model_config or {})
        self.model_config = JEPAConfig(**mcfg)
        if self.smiles:  # malformed structures are refused before anything is fitted
            from bioworld.actions import CompoundFeaturizer

            self._cmp = CompoundFeaturizer(self.smiles)
            self._cmp.validate()

        # ---- data kept for training; a reference control population kept for queries
        self._X = Xs
        self._labels = labels
        rep = adata.obs[replicate_key].astype(str).to_numpy() if replicate_key else np.zeros(len(labels), str)
        self._replicate = pd.factorize(rep)[0]
        rng = np.random.default_rng(self.train_config.seed)
        ctrl_idx = np.flatnonzero(is_ctrl)
        take = np.sort(rng.choice(ctrl_idx, size=min(N_REFERENCE_CELLS, len(ctrl_idx)), replace=False))
        self.reference = Xs[take]
        self.module = None
        self.evaluation = None  # held-out summary (bioworld.eval.evaluate), read back by load()
        self.train_result = None
        self.meta: dict[str, Any] = {"perturbation_key": perturbation_key, "replicate_key": replicate_key}

    # ------------------------------------------------------------ featurizers
    def _build_featurizers(self) -> None:
        key = self.entity_set.hash()
        if key not in _FEATURE_CACHE:  # deterministic in the entity set: build once per process
            from bioworld.entities import load_bundled

            sets = [self.entity_set] + [load_bundled(name) for name in FEATURE_SOURCES]
            _FEATURE_CACHE.clear()
            _FEATURE_CACHE[key] = _GeneFeatures.build(sets, seed=0)
        self.gene_features = _FEATURE_CACHE[key]

    def _compound_features(self, name: str, dose: float) -> np.ndarray:
        """Morgan fingerprint + log-dose; a training compound without SMILES gets an all-zero
        fingerprint (recorded in ``findings``), an unknown one without SMILES is refused."""
        from bioworld.actions import CompoundFeaturizer

        if name not in self.smiles:
            if name in self._compounds_without_smiles():
                return np.concatenate([np.zeros(1024, np.float32), [np.log10(dose + 1e-3)]]).astype(np.float32)
            raise UnknownPerturbationError(
                f"compound {name!r} has no SMILES; known compounds with structures: "
                f"{sorted(self.smiles)[:5]}… Provide its SMILES (smiles=...) to predict it."
            )
        if getattr(self, "_cmp", None) is None:
            self._cmp = CompoundFeaturizer(self.smiles)
        return self._cmp.features(name, dose)

    def _compounds_without_smiles(self) -> set[str]:
        seen = {p.target for lab, a in self.actions.items() for p in a.components if p.kind == "compound"}
        return seen - set(self.smiles)

    def _gene_touch(self, genes: list[str]) -> np.ndarray:
        from bioworld.actions._encode import gene_touch_matrix

        return gene_touch_matrix(genes, list(self.entity_set))

    def _target_features(self, genes: list[str]) -> np.ndarray:
        """Knowledge features ``[n, F_g]`` of genetic targets; a *training* target that no entity,
        regulon or GO set contains gets all zeros (it is learned from its observed effect alone:
        its own action embedding, never dropped; see :class:`bioworld.model.jepa.ActionEncoder`)."""
        out = np.zeros((len(genes), GENE_FEATURE_DIM), np.float32)
        known = [i for i, g in enumerate(genes) if self.gene_features.knows(g)]
        if known:
            out[known] = self.gene_features([genes[i] for i in known])
        return out

    def _check_action(self, action) -> None:
        for p in action.components:
            if p.kind in ("ko", "kd", "act") and not self.gene_features.knows(p.target) \
                    and p.target not in set(self.gene_bank):
                from bioworld.actions._vocab import close_matches

                near = close_matches(p.target, self.gene_features.genes)
                raise UnknownPerturbationError(
                    f"gene {p.target!r} was not a training target and is in no entity, regulon or GO set the model "
                    f"knows, so its effect cannot be predicted; close matches: {near or 'none'}. Check the symbol "
                    "(HGNC, case-sensitive), or train on data where it was perturbed."
                )
            if p.kind == "silence" and p.target not in self.entity_names:
                from bioworld.actions._vocab import close_matches

                raise UnknownPerturbationError(
                    f"cannot silence {p.target!r}: not one of the model's {len(self.entity_names)} entities; "
                    f"close matches: {close_matches(p.target, self.entity_names) or 'none'}"
                )
            if p.kind == "compound" and p.target not in self.smiles and p.target not in self._compounds_without_smiles():
                raise UnknownPerturbationError(
                    f"compound {p.target!r} has no SMILES in this model; known: {sorted(self.smiles)[:5]}…"
                )

    def _encode(self, actions: Sequence[Any]):
        from bioworld.actions._encode import encode_actions

        for a in actions:
            self._check_action(a)
        return encode_actions(
            actions, entity_names=self.entity_names, gene_features=self._target_features,
            gene_feature_dim=GENE_FEATURE_DIM, gene_touch=self._gene_touch,
            compound_features=self._compound_features if self.smiles else None,
            compound_feature_dim=self.model_config.compound_feature_dim,
            max_components=self.model_config.max_components, panel_genes=self.genes,
            gene_bank=self.gene_bank,
        )

    # ------------------------------------------------------------------ train
    def _new_module(self):
        from bioworld.model import JEPA

        torch.manual_seed(self.train_config.seed)
        bank = torch.from_numpy(self._target_features(self.gene_bank)) if self.gene_bank else None
        module = JEPA(self.model_config, torch.from_numpy(self.membership), gene_bank=bank)
        if self.registration.input == "counts":  # cis effects act multiplicatively on log1p counts
            module.set_scale(torch.from_numpy(self.mu), torch.from_numpy(self.sd))
        return module

    def train(self, *, progress: bool = True, state_dir: str | os.PathLike | None = None, **overrides: Any) -> "WorldModel":
        """Train the JEPA. ``overrides`` replace :class:`TrainConfig` fields (e.g. ``max_steps=300``)."""
        from bioworld.data.collate import BlockBufferSampler, EntityMaskCollator, MaskingConfig, TransitionSampler
        from bioworld.train import fit

        if self._X is None:
            raise BioworldError("this model was loaded from disk without its training data; create a new WorldModel to train")
        if overrides:
            from bioworld.train import TrainConfig

            self.train_config = TrainConfig.from_dict({**self.train_config.to_dict(), **overrides})
        cfg = self.train_config
        from bioworld.train._threads import pin_threads

        pin_threads(cfg.resolved_threads())
        labels = list(self.actions)
        table = self._encode([self.actions[lab] for lab in labels])
        row_of = {lab: i for i, lab in enumerate(labels)}
        action_row = np.array([row_of.get(lab, -1) for lab in self._labels])
        train_rows = [row_of[lab] for lab in self.train_labels if lab != self.control]
        collator = EntityMaskCollator(
            len(self.entity_names), len(self.genes),
            MaskingConfig(mode=cfg.mask_mode, self_ratio=tuple(cfg.self_mask_ratio),
                          transition_ratio=tuple(cfg.transition_mask_ratio), structured_prob=cfg.structured_mask_prob),
        )
        sizes = dict(groups_per_batch=cfg.groups_per_batch, cells_per_group=cfg.cells_per_group,
                     self_pairs=cfg.self_pairs, clamp_prob=cfg.clamp_prob)
        if isinstance(self._X, np.ndarray):
            sampler = TransitionSampler(self._X, action_row, row_of[self.control], self._replicate, table,
                                        train_rows, collator, **sizes)
        else:  # out of core: block-buffer sampling over the on-disk matrix
            sampler = BlockBufferSampler(
                self._X, action_row, row_of[self.control], self._replicate, table, train_rows, collator,
                seed=cfg.seed, block_size=cfg.block_size, buffer_blocks=cfg.buffer_blocks,
                refresh_every=cfg.buffer_refresh, resident_controls=cfg.resident_controls, **sizes,
            )
        self.module = self._new_module()
        self.train_result = fit(self.module, sampler, cfg, state_dir=state_dir, progress=progress)
        if isinstance(self._X, np.ndarray):
            self._check_training_fit()
        return self

    def training_fit(self, max_perturbations: int = FIT_CHECK_PERTURBATIONS) -> pd.DataFrame:
        """How well the trained model reproduces perturbations it was trained on.

        For up to ``max_perturbations`` training perturbations (most cells first): the observed mean
        delta (training cells minus control cells, model scale) against ``predict``'s delta, on the
        20 genes it moves most: Pearson and magnitude ratio (norm of predicted / observed). A model
        that learned its training effects has ratios near 1 for the strong ones; on full Papalexi
        (400 steps) training seed 0 reproduced STAT1 / IFNGR1 at 0.20 / 0.04 of their size, seed 1 at
        0.77 / 0.77 (some initialisations never learn the large effects; lr, gradient clipping,
        warmup and own-embedding dropout did not change that for seed 0).
        Needs the training data in memory (not after ``load`` or for backed data).
        """
        from bioworld.eval.metrics import top_de_genes

        if self._X is None or not isinstance(self._X, np.ndarray):
            raise BioworldError("training_fit needs the training data in memory; call it on the model you trained "
                                "(not after load, not for backed data)")
        self._require_module()
        ctrl = self._labels == self.control
        counts = pd.Series(self._labels).value_counts()
        labs = [lab for lab in counts.index if lab in set(self.train_labels) and lab != self.control][:max_perturbations]
        if not labs:
            return pd.DataFrame(columns=["perturbation", "n_cells", "observed_norm_top20", "pearson_top20", "magnitude_ratio_top20"])
        mu_c = self._X[ctrl].mean(0)
        pred = np.asarray(self.predict(labs).layers["delta"], dtype=np.float64)
        rows = []
        for i, lab in enumerate(labs):
            obs = (self._X[self._labels == lab].mean(0) - mu_c).astype(np.float64) * self.sd
            top = top_de_genes(obs, min(20, len(obs)))
            o, p = obs[top], pred[i, top]
            r = float(np.corrcoef(o, p)[0, 1]) if o.std() > 0 and p.std() > 0 else float("nan")
            rows.append({"perturbation": lab, "n_cells": int(counts[lab]), "observed_norm_top20": float(np.linalg.norm(o)),
                         "pearson_top20": r, "magnitude_ratio_top20": float(np.linalg.norm(p) / max(np.linalg.norm(o), 1e-12))})
        return pd.DataFrame(rows)

    def _check_training_fit(self) -> None:
        """Store a summary of :meth:`training_fit` in ``meta`` and warn when strong effects were not learned."""
        fit_df = self.training_fit()
        if fit_df.empty:
            return
        # "strong" = well above the typical effect (most screened targets move little beyond noise)
        norms = fit_df["observed_norm_top20"]
        strong = fit_df[norms >= 2 * float(norms.median())]
        if strong.empty:
            strong = fit_df.nlargest(1, "observed_norm_top20")
        ratio = float(strong["magnitude_ratio_top20"].median())
        self.meta["training_fit"] = {
            "n_perturbations": int(len(fit_df)), "median_pearson_top20": float(fit_df["pearson_top20"].median()),
            "strong_effects": list(strong["perturbation"]), "strong_median_magnitude_ratio": ratio,
        }
        if ratio < WEAK_FIT_RATIO:
            msg = (f"the trained model reproduces its strongest training effects ({', '.join(strong['perturbation'][:4])}) at "
                   f"only {ratio:.2f} of their observed size (median over effects >= 2x the median effect; expected >= {WEAK_FIT_RATIO}). "
                   "Some training runs do not learn the large effects; train with another seed (config seed=...) or a seed "
                   "ensemble (bw.Ensemble.train), and check wm.training_fit().")
            self.findings.append(msg)
            warnings.warn(msg, stacklevel=3)

    # ---------------------------------------------------------------- queries
    def _require_module(self):
        from bioworld.train._threads import pin_threads

        pin_threads(self.train_config.resolved_threads())
        if self.module is None:
            raise BioworldError("the model is not trained yet; call wm.train() or load a trained model directory")
        return self.module

    def parse(self, label: str):
        """Parse a perturbation / intervention label with the project's one parser."""
        from bioworld.actions import parse_action

        return parse_action(label, control_labels=(self.control, "control"))

    def _action_row(self, action) -> dict[str, np.ndarray]:
        """One action's row of the tensorised action table (checked against what the model knows)."""
        t = self._encode([action])
        return {k: getattr(t, k)[0] for k in t.__dataclass_fields__}

    def _rollouts(self, x_std: np.ndarray, actions: Sequence[Any], *, slot_scale: np.ndarray | None = None) -> list:
        """One :func:`bioworld.query.rollout` per action on standardised cells (the single path
        behind ``predict`` and ``counterfactual``; ``silence:`` routed as in ``_intervention_rows``)."""
        from bioworld.query._counterfactual import inactive_inputs, rollout

        m = self._require_module()
        for a in actions:
            self._check_action(a)
        rows, clamps = self._intervention_rows(actions)
        ctrl = self._action_row(self.parse("control"))
        axes = self._activity_axes()
        return [
            rollout(m, x_std, row, ctrl, clamp_entity=ce, slot_scale=slot_scale,
                    x_inactive=None if ce is None else inactive_inputs(x_std, axes, ce))
            for row, ce in zip(rows, clamps)
        ]

    def _to_scale(self, x_std: np.ndarray) -> np.ndarray:
        return x_std * self.sd + self.mu

    def predict(self, perturbations: Sequence[str] | str, *, cells: ad.AnnData | None = None) -> ad.AnnData:
        """Predicted mean expression per perturbation.

        Returns
        -------
        AnnData with ``obs_names`` = the requested labels in order, ``var_names`` = the training
        data's ``var_names``, ``X`` = predicted mean expression on the model's scale (log1p CP10k
        for counts input, the input scale for log input), ``layers['delta']`` = X minus the
        predicted control, ``obs['n_cells']`` = cells the mean is over.
        """
        if isinstance(perturbations, str):
            perturbations = [perturbations]
        labels = [str(p) for p in perturbations]
        if not labels:
            raise BioworldError("no perturbations given; expected at least one label such as 'control' or 'STAT1'")
        actions = [self.parse(lab) for lab in labels]
        x0 = self.reference if cells is None else self._cells_to_std(cells)
        runs = self._rollouts(x0, actions)
        pred = np.stack([r.x_pred.mean(0) for r in runs] + [runs[0].x_base.mean(0)])  # [n + 1 (control), G]
        X = self._to_scale(pred)
        out = ad.AnnData(
            X=X[:-1].astype(np.float32),
            obs=pd.DataFrame({"perturbation": labels, "n_cells": len(x0)}, index=pd.Index(labels, dtype=str)),
            var=pd.DataFrame(index=pd.Index(self.var_names, dtype=str)),
        )
        out.layers["delta"] = (X[:-1] - X[-1]).astype(np.float32)
        out.uns["bioworld"] = {"model": self.describe(), "scale": self.scale_name}
        return out

    @property
    def scale_name(self) -> str:
        return "log1p CP10k" if self.registration.input == "counts" else "input (log) scale"

    def _cells_to_std(self, cells: ad.AnnData) -> np.ndarray:
        from bioworld.data import normalize

        from bioworld.data._register import _check_matrix

        if cells.n_obs == 0:
            raise DataValidationError("cells is empty (0 cells); expected at least one cell")
        cells = self._align_panel(cells)
        _check_matrix(cells, self.registration.input)  # same value checks as at registration
        if self.registration.input == "log":
            from bioworld.data._register import _value_stats

            s = _value_stats(cells.X)
            if s.n_noninteger == 0 and s.maximum >= 1:
                raise DataValidationError(
                    f"cells hold only integers (max {s.maximum:g}): they look like raw counts, but this model was "
                    "trained on log-normalised values (input='log') and would read counts as log values. Fix: "
                    "normalise and log-transform the cells as the training data were (e.g. sc.pp.normalize_total "
                    "+ sc.pp.log1p)."
                )
        reg = replace(self.registration, n_cells=cells.n_obs)
        X = normalize(cells, reg).astype(np.float32)
        if not np.isfinite(X).all():
            raise DataValidationError("cells contain NaN or infinite values after normalisation; clean the input first")
        return ((X - self.mu) / self.sd).astype(np.float32)

    def _align_panel(self, cells: ad.AnnData) -> ad.AnnData:
        names = [str(v) for v in cells.var_names]
        if names == self.var_names:
            return cells
        if set(names) == set(self.var_names) and len(names) == len(self.var_names):
            return cells[:, self.var_names].copy()
        missing = [g for g in self.var_names if g not in set(names)]
        extra = [g for g in names if g not in set(self.var_names)]
        raise DataValidationError(
            f"cells have a different gene panel: {len(missing)} of the model's {len(self.var_names)} genes are "
            f"missing (e.g. {missing[:5]}) and {len(extra)} are extra (e.g. {extra[:5]}). Expected the model's "
            "var_names (any order); subset/reindex the cells to the training panel."
        )

    # ----------------------------------------------------------- counterfactuals
    def _slot_scale(self) -> np.ndarray:
        """Per-slot spread of latents over the reference control cells ``[E]`` (cached)."""
        if getattr(self, "_slot_scale_cache", None) is None:
            m = self._require_module()
            with torch.no_grad():
                z = m.encode(torch.from_numpy(self.reference)).numpy()  # [n, E, D]
            self._slot_scale_cache = np.sqrt(z.var(0).sum(-1)).clip(1e-6)
        return self._slot_scale_cache

    def _activity_axes(self):
        """Per-entity activity axes and "off" levels (1st percentile over the reference cells), cached.

        See :class:`bioworld.query.ActivityAxes`: signed weights where the entity has them, else the
        members' first principal component when it clearly dominates (a silenced unsigned set then
        also raises its repressed members), else every member moved alike. On the simulator's
        (unsigned) pathways the first PC raised the held-out do-operation's Pearson with the truth
        from 0.69 to 0.79 (seed 0, no silence trained) over clamping every member to its 5th
        percentile; on the 10 barely co-varying Hallmark IFN-gamma genes of the Papalexi panel the
        first PC of the reference cells was a near-random direction (silence vs the held-out IFNGR1
        knockout -0.05), moving every member alike gave 0.43.
        """
        if getattr(self, "_axes_cache", None) is None:
            from bioworld.query._counterfactual import ActivityAxes

            self._axes_cache = ActivityAxes.fit(self.reference, self.membership, quantile=INACTIVE_QUANTILE)
        return self._axes_cache

    def _intervention_rows(self, actions: list) -> tuple[list[dict[str, np.ndarray]], list[int | None]]:
        """Action-table rows per intervention plus the slot to clamp (for ``silence:``).

        A ``silence:`` label the model was trained on is its learned action. Any other single
        ``silence:ENTITY`` is a do-operation: the cells are moved along the entity's activity axis
        (:meth:`_activity_axes`), which sets the entity's member genes (their predicted change is that
        move); the slot is clamped to the moved cells' encoding under the control action and the
        predictor propagates the change to the other slots; what the other slots read differently
        from the moved genes is added (:class:`bioworld.query._counterfactual.SilenceTerms`). On the simulator, for silences
        held out of training, the do-operation matched or beat the learned silence action of a model
        trained on the other silences (Pearson with the truth 0.80 vs 0.59 and 0.82 vs 0.81, seeds 0
        and 1; CAUSAL.md has the benchmark). An untrained combination containing a silence uses the
        learned action when the model has learned any silence, and is refused otherwise.
        """
        trained = set(self.train_labels)
        learned_silence = any(p.kind == "silence" for lab in trained for p in self.actions[lab].components)
        rows, clamps = [], []
        for a in actions:
            sil = [p for p in a.components if p.kind == "silence"]
            if sil and a.label not in trained and len(a.components) == 1:
                rows.append(self._action_row(self.parse("control")))
                clamps.append(self.entity_names.index(sil[0].target))
            elif sil and a.label not in trained and not learned_silence:
                raise UnknownPerturbationError(
                    f"{a.label!r}: this model never saw a silence: action in training, so silence: is a "
                    "do-operation on one slot and cannot be combined with other perturbations; query them separately"
                )
            else:
                rows.append(self._action_row(a))
                clamps.append(None)
        return rows, clamps

    def counterfactual(self, cells: ad.AnnData, interventions: Sequence[str] | str) -> ad.AnnData:
        """Per-cell predictions for each intervention on the given cells.

        Parameters
        ----------
        cells
            Cells on the model's gene panel (same genes in any order; counts or log as trained).
        interventions
            Specs in the action grammar: ``silence:ENTITY``, ``ko:GENE``, ``kd:GENE:0.5``,
            ``act:GENE``, ``NAME@DOSE``, combinations with ``+``.

        Returns
        -------
        AnnData with one row per (intervention, cell), intervention-major
        (:func:`bioworld.query._anndata.counterfactual_adata`): ``X`` predicted expression on the
        model's scale, ``layers['delta']`` vs the same cells' predicted unperturbed state; ``obs`` =
        the cells' own columns (cell types, ...) plus ``bw_intervention`` and ``bw_cell``; ``obsm`` =
        the cells' embeddings (``X_umap``, ...) plus ``obsm['bw_entity_shift']``, a DataFrame
        (columns = entity names) of latent shifts in units of slot spread;
        ``uns['bioworld']['entity_effects'][SPEC]`` a DataFrame ``entity, shift, share`` ordered by
        shift, and ``uns['bioworld']['entity_names']``. Writable with plain ``write_h5ad``.
        """
        from bioworld.query._counterfactual import explain_shifts

        self._require_module()
        if isinstance(interventions, str):
            interventions = [interventions]
        specs = [str(s) for s in interventions]
        if not specs:
            raise BioworldError("no interventions given; expected e.g. 'silence:HALLMARK_INTERFERON_GAMMA_RESPONSE'")
        actions = [self.parse(s) for s in specs]
        for a in actions:
            self._check_action(a)
        x = self._cells_to_std(cells)
        Xs, D, shifts, effects = [], [], [], {}
        for spec, r in zip(specs, self._rollouts(x, actions, slot_scale=self._slot_scale())):
            pred, base = self._to_scale(r.x_pred), self._to_scale(r.x_base)
            Xs.append(pred); D.append(pred - base); shifts.append(r.slot_shift)
            effects[spec] = explain_shifts(r.slot_shift, self.entity_names)
        from bioworld.query._anndata import counterfactual_adata

        out = counterfactual_adata(cells, specs, Xs, D, shifts, var_names=self.var_names,
                                   entity_names=self.entity_names, effects=effects,
                                   uns={"scale": self.scale_name, "model": self.describe()})
        return out

    def prioritize(
        self,
        cells: ad.AnnData | None,
        goal: str,
        *,
        genes: Sequence[str] | None = None,
        entities: Sequence[str] | None = None,
        pairs: bool = True,
        gene_pairs_top: int = 8,
        n_boot: int = 200,
        max_cells: int = 1000,
        screen_cells: int = 16,
        refine_top: int = 20,
    ):
        """Rank single and paired interventions by how well they move ``cells`` towards ``goal``.

        Parameters
        ----------
        cells
            Starting cells (``None`` = the model's reference control cells). At most ``max_cells``
            are used (a seeded subsample, reported in the provenance).
        goal
            ``down:ENTITY``, ``up:ENTITY`` or ``toward:control`` (see :mod:`bioworld.query`).
        genes
            Candidate gene knockouts (default: the genetic targets the model was trained on or
            held out). ``entities``: entities to silence (default: all slots).
        pairs
            Also score every pair of silenced entities and pairs among the ``gene_pairs_top`` best
            gene knockouts; ``synergy`` = pair score minus the sum of its singles.
        n_boot
            Bootstrap resamples for the 95% intervals.
        screen_cells, refine_top
            Two-stage search in latent space. The cells are encoded once. **Screen** (approximate):
            k-means over the cells' latents picks ``screen_cells`` prototype cells (the cell
            nearest each centre), and every candidate is scored on them, weighted by the share of
            cells in each prototype's cluster. **Refine** (exact): the ``refine_top`` best
            screened candidates, plus the singles that make up refined pairs, are re-scored on all
            cells. With at most ``screen_cells`` cells there are no prototypes: every row is exact.

        Notes
        -----
        Silences are scored as do-operations (the slot clamped to its inactive latent under the
        control action). What is exact: the score, interval, per-cell scores and entity shifts of
        every row whose ``table['n_cells']`` equals the number of cells used: the same numbers an
        exhaustive search over all cells gives for that row (up to float rounding). What is
        approximate: rows with ``n_cells`` = ``provenance['n_screen_cells']`` were only screened;
        their score is the cluster-weighted mean over the prototype cells, their interval a
        bootstrap over the prototypes (drawn with the cluster weights), their entity shift the
        weighted mean and their per-cell scores those of the prototype cells. Synergy always
        compares a pair with its singles on the same cells (refined pairs with refined singles,
        screened pairs with screened singles). Ranking: refined rows come first, ordered by their
        exact score, then screened-only rows, ordered by their prototype score (the screen put
        each of them below the ``refine_top`` rows it sent to refinement; one sort over both kinds
        of score would let the prototypes' bias push exact rows down). A candidate whose
        prototype score underestimates it enough to leave the screen's top ``refine_top`` can be
        missed, and the ``gene_pairs_top`` genes are chosen on screened scores;
        ``benchmarks/run_planner_check.py`` measures both against scoring every candidate on every
        cell. Cost: about candidates x ``screen_cells`` + refined rows x cells predictor rows.

        Returns
        -------
        :class:`bioworld.query.PrioritizationResult` (ranked table with bootstrap 95% intervals of
        the mean score over cells, entity shifts, per-cell scores, pair synergy matrix).
        """
        import time

        from bioworld.query._planner import (
            Goal,
            PrioritizationResult,
            bootstrap_interval,
            encode_cells,
            inactive_latents,
            latent_prototypes,
            pair_candidates,
            score_interventions,
        )

        t0 = time.perf_counter()
        m = self._require_module()
        for what, given in (("genes", genes), ("entities", entities)):
            listed = [] if given is None or isinstance(given, str) else [str(v) for v in given]
            dups = sorted({v for v in listed if listed.count(v) > 1})
            if dups:
                raise BioworldError(f"{what} lists {dups[:5]} more than once; expected each candidate once (a repeat "
                                    f"would be ranked twice). Fix: remove the repeats" + (" (CLI: --genes)." if what == "genes" else "."))
        g = Goal.parse(goal, entity_names=self.entity_names)
        x = self.reference if cells is None else self._cells_to_std(cells)
        n_total = len(x)
        if len(x) > max_cells:
            x = x[np.sort(np.random.default_rng(self.train_config.seed).choice(len(x), max_cells, replace=False))]
        ents = list(self.entity_names) if entities is None else list(entities)
        for e in ents:
            if e not in self.entity_names:
                raise UnknownPerturbationError(f"entity {e!r} is not one of the model's slots")
        if genes is None:
            genes = sorted({p.target for lab, a in self.actions.items() for p in a.components if p.kind in ("ko", "kd", "act")})
        ctrl = self._action_row(self.parse("control"))
        gene_actions = [self.parse(f"ko:{gn}") for gn in genes]
        gt = self._encode(gene_actions) if gene_actions else None
        singles = [(f"silence:{e}", ctrl, [self.entity_names.index(e)]) for e in ents]
        if gt is not None:
            singles += [(a.label, {k: getattr(gt, k)[i] for k in gt.__dataclass_fields__}, []) for i, a in enumerate(gene_actions)]

        score_w = m.encoder.score_w  # [E, G]
        center = torch.from_numpy(self.reference.mean(0))
        if g.direction == "toward":
            def goal_fn(x_new, x_base):
                return (x_base - center).norm(dim=1) - (x_new - center).norm(dim=1)
        else:
            w = score_w[self.entity_names.index(g.target)]
            sign = -1.0 if g.direction == "down" else 1.0

            def goal_fn(x_new, x_base):
                return sign * ((x_new - x_base) @ w)

        axes = self._activity_axes()
        scale = self._slot_scale()
        seed = self.train_config.seed

        def inactive_fn(xc: np.ndarray, e: int) -> np.ndarray:  # cells with entity e driven "off"
            from bioworld.query._counterfactual import inactive_inputs

            return inactive_inputs(xc, axes, e)

        def run(cache, xc, rows, weights=None):
            """Score candidates ``rows`` on cached cells, with inactive latents of the clamped slots."""
            clamped = sorted({e for _, _, ce in rows for e in ce})
            inact = inactive_latents(m, xc, clamped, inactive_fn, z=cache.z)
            return score_interventions(m, None, rows, ctrl, inact.__getitem__, goal_fn, scale, cache=cache, weights=weights)

        cands = list(singles)
        pair_idx: list[tuple[int, int]] = []
        if pairs:
            for label, (a, b) in pair_candidates(singles):
                cands.append((label, ctrl, singles[a][2] + singles[b][2]))
                pair_idx.append((a, b))
        cache = encode_cells(m, x, ctrl)  # every cell encoded once
        n = len(x)
        exact = n <= screen_cells
        if exact:
            proto, pw = np.arange(n), None
        else:
            proto, pw = latent_prototypes(cache.z, screen_cells, seed=seed)
        pcache, xp = cache.subset(proto), x[proto]
        # stage 1: screen every candidate on the prototype cells
        scores, shifts = run(pcache, xp, cands, pw)

        def screen_mean(s):  # [rows] float32, as the per-cell scores
            return (s.mean(1) if pw is None else s @ pw).astype(np.float32)

        if pairs and gt is not None and gene_pairs_top > 1:
            n_ent = len(ents)
            top = np.argsort(-screen_mean(scores[n_ent:len(singles)]), kind="stable")[:gene_pairs_top] + n_ent
            combos = list(itertools_combinations(sorted(top), 2))
            if combos:
                acts = [self.parse(f"{singles[a][0]}+{singles[b][0]}") for a, b in combos]
                tab = self._encode(acts)
                extra = [(act.label, {k: getattr(tab, k)[i] for k in tab.__dataclass_fields__}, []) for i, act in enumerate(acts)]
                pair_idx += combos
                s2, sh2 = run(pcache, xp, extra, pw)
                cands += extra
                scores = np.concatenate([scores, s2]); shifts = np.concatenate([shifts, sh2])
        n_single = len(singles)
        screened = screen_mean(scores)
        # stage 2: refine the best candidates (and the singles of refined pairs) on all cells
        refined = np.full(len(cands), exact)
        per_cell: dict[int, np.ndarray] = {i: scores[i] for i in range(len(cands))}
        mean = screened.copy()
        if not exact:
            best = set(np.argsort(-screened, kind="stable")[:refine_top].tolist())
            best |= {s for k, ab in enumerate(pair_idx) if n_single + k in best for s in ab}
            idx = sorted(best)
            s3, sh3 = run(cache, x, [cands[i] for i in idx])
            for j, i in enumerate(idx):
                per_cell[i] = s3[j]
                shifts[i] = sh3[j]
                mean[i] = s3[j].mean()
            refined[idx] = True
        n_cells_row = np.where(refined, n, len(proto))
        lo, hi = np.empty(len(cands)), np.empty(len(cands))
        rows = np.flatnonzero(refined)
        if len(rows):
            lo[rows], hi[rows] = bootstrap_interval(np.stack([per_cell[i] for i in rows]), n_boot=n_boot, seed=seed)
        rows = np.flatnonzero(~refined)
        if len(rows):
            lo[rows], hi[rows] = bootstrap_interval(scores[rows], n_boot=n_boot, seed=seed, weights=pw)
        synergy = np.full(len(cands), np.nan)
        for k, (a, b) in enumerate(pair_idx):
            p = n_single + k
            src = mean if refined[p] else screened  # a refined pair has refined singles: same cells
            synergy[p] = src[p] - (src[a] + src[b])
        top_ent = [", ".join(self.entity_names[j] for j in np.argsort(-row)[:3]) for row in shifts]
        table = pd.DataFrame({
            "intervention": [c[0] for c in cands],
            "kind": ["single"] * n_single + ["pair"] * (len(cands) - n_single),
            "score": mean, "score_lo": lo, "score_hi": hi, "synergy": synergy,
            "top_entities": top_ent, "n_cells": n_cells_row,
        })
        # exact (refined) rows first, by score; then screened-only rows, by their prototype score
        table = table.iloc[np.lexsort((-mean, ~refined))].reset_index(drop=True)
        table.insert(0, "rank", np.arange(1, len(table) + 1))
        order = {c[0]: i for i, c in enumerate(cands)}
        top_labels = list(table["intervention"][:12])
        syn_m = np.full((len(ents), len(ents)), np.nan)
        for k, (a, b) in enumerate(pair_idx):
            if a < len(ents) and b < len(ents):  # both silences (singles list the entities first)
                syn_m[a, b] = syn_m[b, a] = synergy[n_single + k]
        syn = pd.DataFrame(syn_m, index=ents, columns=ents)
        return PrioritizationResult(
            goal=g.spec, table=table,
            entity_shift=pd.DataFrame(shifts, index=[c[0] for c in cands], columns=self.entity_names),
            per_cell_scores={lab: per_cell[order[lab]] for lab in top_labels},
            pair_synergy=syn,
            provenance={"model": self.describe(), "n_cells_used": n, "n_cells_given": int(n_total),
                        "n_candidates": len(cands), "scale": self.scale_name, "n_screen_cells": len(proto),
                        "n_refined": int(refined.sum()),
                        "screen": "all cells (exact)" if exact else
                                  f"{len(proto)} k-means prototype cells of the latents, weighted by cluster size",
                        "interval": f"bootstrap {n_boot}x over cells, 95% percentile interval of the mean score"},
            wall_s=time.perf_counter() - t0,
        )

    @torch.no_grad()
    def get_entity_latents(self, adata: ad.AnnData) -> np.ndarray:
        """Entity latents ``[cells, E, D]`` of the (context) encoder for ``adata``'s cells."""
        m = self._require_module()
        x = torch.from_numpy(self._cells_to_std(adata))
        return np.concatenate([m.encode(x[s:s + 2048]).numpy() for s in range(0, len(x), 2048)])

    def describe(self) -> dict[str, Any]:
        tr = self.train_result
        return {
            "n_genes": len(self.genes), "n_entities": len(self.entity_names),
            "entity_hash": self.entity_set.hash(), "input": self.registration.input,
            "train_labels": list(self.train_labels), "holdout": list(self.holdout),
            "seed": self.train_config.seed,
            "train_wall_s": float("nan") if tr is None else round(tr.wall_s, 2),
        }

    # -------------------------------------------------------------- save/load
    def save(self, directory: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Write ``model.safetensors`` + ``bioworld.json`` (atomic; no pickled code)."""
        from bioworld.train.checkpoint import META, save_checkpoint

        m = self._require_module()
        d = Path(directory)
        if not overwrite and (d / META).exists():
            raise CheckpointError(f"{str(d)!r} already holds a model; pass overwrite=True (CLI: --overwrite) to replace it")
        if "data_hash" not in self.meta and isinstance(getattr(self, "_X", None), np.ndarray):
            from bioworld.report.card import data_hash

            self.meta["data_hash"] = data_hash(self._X, self._labels)
        tensors = {f"module.{k}": v for k, v in m.state_dict().items()}
        tensors.update({
            "norm.mu": torch.from_numpy(self.mu), "norm.sd": torch.from_numpy(self.sd),
            "reference": torch.from_numpy(self.reference), "membership": torch.from_numpy(self.membership),
            "gene_features": torch.from_numpy(self.gene_features.table),
        })
        tr = self.train_result
        meta = {
            "model_config": self.model_config.to_dict(), "train_config": self.train_config.to_dict(),
            "registration": self.registration.to_dict(), "var_names": self.var_names, "genes": self.genes,
            "entities": self.entity_set.to_dict(), "entity_hash": self.entity_set.hash(),
            "entity_names": self.entity_names, "control": self.control,
            "actions": {lab: a.label for lab, a in self.actions.items()},
            "train_labels": self.train_labels, "holdout": self.holdout, "gene_bank": self.gene_bank,
            "gene_feature_genes": self.gene_features.genes, "smiles": self.smiles,
            "findings": self.findings, "meta": self.meta,
            "train_result": None if tr is None else {"steps": tr.steps, "wall_s": tr.wall_s,
                                                      "cells_per_s": tr.cells_per_s, "history": tr.history},
        }
        save_checkpoint(d, tensors, meta)
        from bioworld.report.card import write_model_card

        write_model_card(self, d)  # README.md: data hash, config, training fit, held-out metrics, licences
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "WorldModel":
        """Rebuild a trained model from its directory; refuses corrupt or inconsistent checkpoints."""
        from bioworld.actions import parse_action
        from bioworld.data import Registration
        from bioworld.entities import EntitySet, map_to_panel
        from bioworld.model import JEPA, JEPAConfig
        from bioworld.train import TrainConfig
        from bioworld.train.checkpoint import load_checkpoint

        from bioworld._checkpoint_schema import validate_model_meta

        tensors, meta = load_checkpoint(directory)
        validate_model_meta(meta, tensors, directory)  # every field, before anything is built
        try:
            self = cls.__new__(cls)
            self.model_config = JEPAConfig.from_dict(meta["model_config"])
            self.train_config = TrainConfig.from_dict(meta["train_config"])
            self.registration = Registration.from_dict(meta["registration"])
            self.var_names, self.genes = list(meta["var_names"]), list(meta["genes"])
            self.entity_set = EntitySet.from_dict(meta["entities"])
            self.entity_names = list(meta["entity_names"])
            self.control = meta["control"]
            self.train_labels, self.holdout = list(meta["train_labels"]), list(meta["holdout"])
            self.gene_bank = list(meta["gene_bank"])
            self.smiles = dict(meta["smiles"])
            self.findings, self.meta = list(meta["findings"]), dict(meta["meta"])
            gene_genes = list(meta["gene_feature_genes"])
        except (KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{directory}: bioworld.json lacks or mangles field {e}; the checkpoint is incomplete") from None
        except (BioworldError, ValueError) as e:
            raise CheckpointError(f"{directory}: bioworld.json holds invalid definitions ({e}); the checkpoint is corrupt") from None
        if self.entity_set.hash() != meta.get("entity_hash"):
            raise CheckpointError(
                f"{directory}: entity definitions hash to {self.entity_set.hash()[:12]}… but the checkpoint records "
                f"{str(meta.get('entity_hash'))[:12]}…; the entity set was modified. Restore the directory or retrain."
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            panel = map_to_panel(self.entity_set, self.genes, min_genes=1)
        stored = tensors.get("membership")
        if stored is None or tuple(stored.shape) != tuple(panel.membership.shape):
            raise CheckpointError(
                f"{directory}: tensor 'membership' has shape {tuple(stored.shape) if stored is not None else 'missing'}, "
                f"expected {tuple(panel.membership.shape)} (entities x genes); the checkpoint is corrupt"
            )
        if panel.names != self.entity_names or not np.allclose(panel.membership, stored.numpy()):
            raise CheckpointError(
                f"{directory}: the stored entities do not map onto the stored gene panel as they did in training "
                f"({len(panel.names)} vs {len(self.entity_names)} slots); the checkpoint is inconsistent"
            )
        G, E = len(self.genes), len(self.entity_names)
        expect = {"norm.mu": (G,), "norm.sd": (G,), "gene_features": (len(gene_genes), GENE_FEATURE_DIM),
                  "membership": (E, G)}
        ref = tensors.get("reference")
        if ref is None or ref.dim() != 2 or ref.shape[1] != G or ref.shape[0] < 1:
            raise CheckpointError(
                f"{directory}: tensor 'reference' has shape {tuple(ref.shape) if ref is not None else 'missing'}, "
                f"expected (cells, {G}); the checkpoint is corrupt"
            )
        for k, shape in expect.items():
            if k not in tensors or tuple(tensors[k].shape) != shape:
                raise CheckpointError(f"{directory}: tensor {k!r} has shape {tuple(tensors[k].shape) if k in tensors else 'missing'}, expected {shape}")
        self.membership = tensors["membership"].numpy()
        self.mu, self.sd = tensors["norm.mu"].numpy(), tensors["norm.sd"].numpy()
        self.reference = tensors["reference"].numpy()
        self.gene_features = _GeneFeatures(gene_genes, tensors["gene_features"].numpy())
        try:
            self.actions = {lab: parse_action(lab, control_labels=(self.control, "control")) for lab in meta["actions"]}
        except BioworldError as e:
            raise CheckpointError(f"{directory}: bioworld.json holds an action the parser refuses ({e}); the checkpoint "
                                  "is corrupt or was edited") from None
        module = JEPA(self.model_config, torch.from_numpy(self.membership))
        state = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
        own = module.state_dict()
        bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
        if bad or set(state) - set(own):
            raise CheckpointError(
                f"{directory}: weights do not match the stored config (mismatched/missing: {bad[:4]}, "
                f"unexpected: {sorted(set(state) - set(own))[:4]}); the checkpoint was tampered with or is corrupt"
            )
        module.load_state_dict(state)
        module.eval()
        self.module = module
        self._X = None
        tr = meta.get("train_result")
        from bioworld.train import TrainResult

        self.train_result = None if tr is None else TrainResult(**tr)
        from bioworld.eval._evaluate import load_evaluation

        self.evaluation = load_evaluation(directory)  # held-out table of 'bioworld evaluate', or None
        return self

    def __repr__(self) -> str:
        status = "trained" if self.module is not None else "untrained"
        return (f"WorldModel({status}: {len(self.genes)} genes, {len(self.entity_names)} entity slots, "
                f"{len(self.train_labels) - 1} training perturbations, holdout={len(self.holdout)})")


def train_until_fit(build: Any, config: Any, *, restarts: int = 2, progress: bool = True,
                    log: Any = None) -> "WorldModel":
    """Train ``build(config)``; when the run did not learn its strong training effects
    (``meta['training_fit']['strong_median_magnitude_ratio'] < WEAK_FIT_RATIO``, see
    :meth:`WorldModel.training_fit`), train ``build`` again with the next seed, at most ``restarts``
    times, and return the best run. Deterministic: the same config gives the same sequence of seeds.
    The CLI's ``train`` and the demo use it; ``WorldModel.train`` itself trains once.
    """
    from dataclasses import replace

    best = None
    for k in range(int(restarts) + 1):
        cfg = replace(config, seed=config.seed + k)
        wm = build(cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the weak-fit warning is reported through ``log`` instead
            wm.train(progress=progress)
        ratio = wm.meta.get("training_fit", {}).get("strong_median_magnitude_ratio", 1.0)
        if best is None or ratio > best[0]:
            best = (ratio, wm)
        if ratio >= WEAK_FIT_RATIO:
            break
        if log is not None:
            log(f"training seed {cfg.seed} reproduced the strongest training effects at only {ratio:.2f} of their size"
                + (f"; training again with seed {cfg.seed + 1}" if k < restarts else "; keeping the best run"))
    return best[1]


def _train_config(config: Any):
    from bioworld.train import TrainConfig

    if config is None:
        return TrainConfig()
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return TrainConfig.from_dict({**TrainConfig().to_dict(), **config})
    if isinstance(config, (str, os.PathLike)):
        return TrainConfig.from_file(config)
    raise BioworldError(f"config must be a TrainConfig, dict or JSON path; got {type(config).__name__}")


def _read_smiles(smiles: Any, adata: ad.AnnData, compound_id_key: str | None, actions: dict) -> dict[str, str]:
    """Compound name -> SMILES for the compounds in the data (and any extra given)."""
    compounds = sorted({p.target for a in actions.values() for p in a.components if p.kind == "compound"})
    if not compounds or smiles is None:
        return {}
    if isinstance(smiles, dict):
        table = dict(smiles)
    else:
        from bioworld.actions import load_smiles_table

        table = load_smiles_table(smiles)
    out: dict[str, str] = {}
    if compound_id_key is not None and "pert_iname" in adata.obs.columns:
        names = adata.obs["pert_iname"].astype(str)
        ids = adata.obs[compound_id_key].astype(str)
        for n, i in zip(names, ids):
            s = table.get(i[:13]) or table.get(i) or table.get(n)
            if s:
                out[n] = s
    for c in compounds:
        if c not in out and c in table:
            out[c] = table[c]
    return out
