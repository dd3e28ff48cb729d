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
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import torch

from bioworld.errors import BioworldError, CheckpointError, DataValidationError
from bioworld.train.fit_check import FIT_CHECK_PERTURBATIONS, WEAK_FIT_RATIO, train_until_fit  # noqa: F401 (re-exported)

#: Observation columns tried (in order) as the pairing context when no replicate key is given.
REPLICATE_CANDIDATES = ("replicate", "bio_rep", "batch", "gem_group", "plate", "det_plate")
#: Number of control cells kept in the model directory as the default starting population.
N_REFERENCE_CELLS = 512
INACTIVE_QUANTILE = 0.01  # "off" = the entity's activity in the lowest 1% of reference cells
VALIDATION_SOURCE_CELLS = 32  # control cells the held-in validation predicts from (early stopping)
BACKED_SUBSAMPLE = 20000  # cells read from a backed AnnData to fit the NMF programs
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
        knowledge: Any = True,
        compound_targets: Any = None,
    ) -> None:
        from bioworld.actions import parse_action
        from bioworld.actions._space import ActionSpace, GeneFeatureTable, compound_features_for
        from bioworld.data import normalize, register
        from bioworld.data._backed import BackedExpression, is_backed, normalize_block, read_rows, streaming_moments
        from bioworld.entities import EntitySet, map_to_panel, resolve_entities

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
        base = resolve_entities(entities)
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

        # ---- actions: the vocabulary, its feature sources and the retrieval bank
        uniq = [control] + [lab for lab in reg.perturbations]
        actions = {lab: parse_action(lab, control_labels=(control, "control")) for lab in uniq}
        self.holdout = sorted(set(getattr(holdout, "test", holdout)))
        unknown = [h for h in self.holdout if h not in actions]
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
        genes_src = GeneFeatureTable.from_entities(self.entity_set)
        self.meta: dict[str, Any] = {"perturbation_key": perturbation_key, "replicate_key": replicate_key}
        if knowledge is not False and knowledge is not None:  # genes and compounds grounded in curated knowledge
            from bioworld.actions._knowledge import knowledge_sources
            from bioworld.actions._space import _compound_targets, read_smiles

            table = read_smiles(smiles, adata, compound_id_key, sorted(_compound_targets(actions)))
            genes_src, compounds, found, kmeta = knowledge_sources(
                genes_src, actions, config=None if knowledge is True else knowledge, smiles=table,
                compound_targets=compound_targets)
            self.meta.update(kmeta)
        else:
            compounds, found = compound_features_for(actions, smiles, adata, compound_id_key)
        self.findings += found
        self.train_labels = [lab for lab in uniq if lab not in self.holdout and lab not in reg.dropped]
        gene_bank = sorted({p.target for lab in self.train_labels for p in actions[lab].components
                            if p.kind in ("ko", "kd", "act")})
        self.space = ActionSpace(
            control=control, actions=actions, entity_set=self.entity_set, entity_names=self.entity_names,
            panel_genes=self.genes, gene_bank=gene_bank, genes=genes_src,
            compounds=compounds, max_components=max(2, max(len(a) for a in actions.values())),
        )
        unknowable = self.space.featureless_targets()
        if unknowable:
            self.findings.append(
                f"{len(unknowable)} training targets are in no entity, regulon or GO set ({', '.join(unknowable[:6])}"
                + (" …" if len(unknowable) > 6 else "") + "): they are learned from their observed effect alone "
                "(own action embedding); unseen genes without such knowledge cannot be predicted"
            )
        mcfg = dict(
            gene_bank_size=len(gene_bank),
            n_genes=len(self.genes), n_entities=len(self.entity_names), gene_feature_dim=self.space.genes.dim,
            compound_feature_dim=self.space.compound_dim, max_components=self.space.max_components,
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
        self._engine = None
        self.train_result = None

    # ------------------------------------------------------------ actions
    @property
    def actions(self) -> dict[str, Any]:
        """Label -> parsed action of every label in the training data (control first)."""
        return self.space.actions

    @property
    def gene_bank(self) -> list[str]:
        return self.space.gene_bank

    @property
    def smiles(self) -> dict[str, str]:
        return {} if self.space.compounds is None else dict(self.space.compounds.smiles)

    @property
    def gene_features(self):
        """The gene feature source (:class:`bioworld.actions.GeneFeatureTable`; callable on a gene list)."""
        return self.space.genes

    def _encode(self, actions: Sequence[Any]):
        return self.space.encode(actions)

    # ------------------------------------------------------------------ train
    def _new_module(self):
        from bioworld.model import JEPA

        torch.manual_seed(self.train_config.seed)
        feats = self.space.bank_features()
        bank = None if feats is None else torch.from_numpy(feats)
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
        cfg, validate, action_row = self._size_training(cfg, table, action_row, train_rows, row_of[self.control])
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
        data_key = self._data_key(action_row) if state_dir is not None else None
        self.train_result = fit(self.module, sampler, cfg, state_dir=state_dir, progress=progress, data_key=data_key,
                                validate=None if validate is None else validate(self.module))
        self.single_effects = {}
        if isinstance(self._X, np.ndarray):
            self._check_training_fit()  # the model's own answers, before combinations are anchored
            self._store_single_effects()
        return self

    def _data_key(self, action_row: np.ndarray) -> dict[str, Any]:
        """What a resumed training must share with the interrupted one (hashes, JSON-able)."""
        import hashlib

        def digest(*arrays: Any) -> str:
            h = hashlib.sha256()
            for a in arrays:
                h.update(np.ascontiguousarray(a).tobytes())
            return h.hexdigest()

        key = {
            "genes": digest(np.asarray(self.genes, dtype=object).astype(str)),
            "entities": self.entity_set.hash(),
            "train_labels": digest(np.asarray(sorted(self.train_labels), dtype=str)),
            "statistics": digest(self.mu, self.sd, self.membership),
            "cells": digest(action_row, self._replicate),
        }
        if isinstance(self._X, np.ndarray):  # in memory: the data themselves (backed: their statistics above)
            key["data"] = digest(self._X)
        return key

    def _size_training(self, cfg, table, action_row: np.ndarray, train_rows: list[int], control_row: int):
        """With ``max_steps=0``: the data-sized number of steps and the held-in validation.

        Returns the config ``fit`` runs with (``max_steps`` resolved; warmup at most a fifth of it),
        a ``module -> HeldInValidation`` factory or None, and the action rows the sampler draws from
        (held-in cells set to -1, so batches never contain them). An explicit ``max_steps`` trains
        exactly that many steps on every cell, without early stopping.
        """
        from bioworld.train.validation import HeldInValidation, auto_steps, split_held_in

        if cfg.max_steps > 0:
            return cfg, None, action_row
        in_memory = isinstance(self._X, np.ndarray)
        val = split_held_in(action_row, train_rows, fraction=cfg.val_fraction, min_cells=cfg.val_min_cells,
                            seed=cfg.seed) if in_memory else np.zeros(len(action_row), bool)
        n_train = int(np.isin(action_row, train_rows).sum() - val.sum())
        steps = auto_steps(n_train, cfg.groups_per_batch * cfg.cells_per_group, epochs=cfg.auto_epochs,
                           min_steps=cfg.min_steps, cap=cfg.step_cap, n_groups=len(train_rows),
                           groups_per_batch=cfg.groups_per_batch, group_visits=cfg.group_visits)
        cfg = replace(cfg, max_steps=steps, warmup_steps=min(cfg.warmup_steps, max(1, steps // 5)))
        groups = [r for r in train_rows if val[action_row == r].any()]
        if not groups:
            return cfg, None, action_row
        ctrl = np.flatnonzero(action_row == control_row)
        rng = np.random.default_rng([cfg.seed, 1213])
        src = np.sort(rng.choice(ctrl, size=min(VALIDATION_SOURCE_CELLS, len(ctrl)), replace=False))
        mu_c = self._X[ctrl].mean(0)
        obs = np.stack([self._X[val & (action_row == r)].mean(0) - mu_c for r in groups]).astype(np.float32)
        weight = np.array([(val & (action_row == r)).sum() for r in groups], np.float32)
        def rows_of(ids: list[int]):
            return table.take(np.asarray(ids))

        def factory(module):
            return HeldInValidation(torch.from_numpy(self._X[src]), rows_of(groups), rows_of([control_row]),
                                    torch.from_numpy(obs), torch.from_numpy(weight))

        action_row = np.where(val, -1, action_row)
        return cfg, factory, action_row

    def training_fit(self, max_perturbations: int = FIT_CHECK_PERTURBATIONS) -> pd.DataFrame:
        """How well the trained model reproduces perturbations it was trained on.

        For up to ``max_perturbations`` training perturbations (most cells first): the observed mean
        delta (training cells minus control cells, model scale) against ``predict``'s delta, on the
        20 genes it moves most: Pearson and magnitude ratio (norm of predicted / observed); see
        :func:`bioworld.train.fit_check.training_fit`. Needs the training data in memory (not after
        ``load`` or for backed data).
        """
        from bioworld.train.fit_check import training_fit

        if self._X is None or not isinstance(self._X, np.ndarray):
            raise BioworldError("training_fit needs the training data in memory; call it on the model you trained "
                                "(not after load, not for backed data)")
        self._require_module()
        return training_fit(self._X, self._labels, control=self.control, train_labels=self.train_labels, sd=self.sd,
                            predict_delta=lambda labs: self.predict(labs).layers["delta"],
                            max_perturbations=max_perturbations)

    def _check_training_fit(self) -> None:
        """Store a summary of :meth:`training_fit` in ``meta`` and warn when strong effects were not learned."""
        from bioworld.train.fit_check import summarize_fit

        summary, msg = summarize_fit(self.training_fit())
        if summary is not None:
            self.meta["training_fit"] = summary
        if msg is not None:
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
        return self.space.parse(label)

    def to(self, device: str) -> "WorldModel":
        """Answer queries on ``device`` (``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'auto'``: a GPU when torch
        sees one); an unavailable device is refused with the reason. Returns the model."""
        from dataclasses import replace as _replace

        dev = _replace(self.train_config, device=str(device)).resolved_device()
        self._require_module().to(dev)
        return self

    @property
    def engine(self):
        """The query engine of the trained module (:class:`bioworld.query.engine.Engine`), built on first use."""
        m = self._require_module()
        if self._engine is None or self._engine.module is not m:
            from bioworld.query.engine import Engine

            self._engine = Engine(m, self.space, self.reference, self.membership, self.train_labels,
                                  inactive_quantile=INACTIVE_QUANTILE,
                                  single_effects={c: row for c, (_, row) in (getattr(self, "single_effects", None) or {}).items()})
        return self._engine

    def _store_single_effects(self) -> None:
        """Observed mean effect (standardised, vs control) of every trained single perturbation."""
        ctrl_mean = self._X[self._labels == self.control].mean(0)
        out = {}
        for lab in self.train_labels:
            a = self.actions[lab]
            if lab == self.control or len(a.components) != 1:
                continue
            cells = self._labels == lab
            if cells.any():
                out[a.components[0]] = (lab, (self._X[cells].mean(0) - ctrl_mean).astype(np.float32))
        self.single_effects = out
        self._engine = None  # the query engine is rebuilt with them

    def _to_scale(self, x_std: np.ndarray) -> np.ndarray:
        return x_std * self.sd + self.mu

    def predict(self, perturbations: Sequence[str] | str, *, cells: ad.AnnData | None = None,
                context: str | None = None, compounds: Mapping[str, str] | None = None,
                compound_targets: Any = None) -> ad.AnnData:
        """Predicted mean expression per perturbation.

        ``compounds`` (name -> SMILES) and ``compound_targets`` (a TSV/CSV path with columns
        ``compound, target_gene`` or a dict name -> genes) describe compounds the model has not met;
        any compound the bundled knowledge resolves by name needs neither. ``context`` (an atlas
        cell line / cell type, e.g. ``'A498'``, ``'myeloid'``) answers instead with the pretrained
        atlas model: see :func:`bioworld.query.predict_in_context` for the fields it returns.

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
        if context is not None:
            from bioworld.query._atlas import predict_in_context
            from bioworld.train.pretrain import load_pretrained

            return predict_in_context(load_pretrained(), labels, context)
        eng = self.engine
        if compounds or compound_targets is not None:
            from bioworld.query._atlas import engine_with_compounds

            eng = engine_with_compounds(eng, compounds, compound_targets)
        cands = eng.candidates([self.parse(lab) for lab in labels])
        x0 = self.reference if cells is None else self._cells_to_std(cells)
        cache = eng.encode(x0)
        r = eng.run(cache, cands)
        pred = np.stack([r.x_pred[i].mean(0) for i in range(len(labels))] + [cache.x_base.cpu().numpy().mean(0)])  # [n + 1 (control), G]
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

        eng = self.engine
        if isinstance(interventions, str):
            interventions = [interventions]
        specs = [str(s) for s in interventions]
        if not specs:
            raise BioworldError("no interventions given; expected e.g. 'silence:HALLMARK_INTERFERON_GAMMA_RESPONSE'")
        cands = eng.candidates([self.parse(s) for s in specs], labels=specs)
        x = self._cells_to_std(cells)
        cache = eng.encode(x)
        r = eng.run(cache, cands)
        base = self._to_scale(cache.x_base.cpu().numpy())
        Xs, D, shifts, effects = [], [], [], {}
        for i, spec in enumerate(specs):
            pred = self._to_scale(r.x_pred[i])
            Xs.append(pred); D.append(pred - base); shifts.append(r.shift[i])
            effects[spec] = explain_shifts(r.shift[i], self.entity_names)
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
        compounds: Sequence[str] | None = None,
        dose: float = 1.0,
        max_genes: int | None = 1000,
        pairs: bool = True,
        gene_pairs_top: int = 8,
        n_boot: int = 200,
        max_cells: int = 1000,
        screen_cells: int = 16,
        refine_top: int = 20,
        overlap: float = 0.5,
        readout_share: float = 0.1,
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
            Candidate gene knockouts. Default: the genetic targets of the data (trained or held
            out), then the genes of the model's knowledge gene table closest to the goal entity's
            genes (:func:`bioworld.query._candidates.gene_candidates`), ``max_genes`` in all
            (``None``: every gene the model can represent). ``entities``: entities to silence
            (default: all slots; ranked as ``kind`` ``entity``, a mechanism).
        compounds
            Candidate compounds (names, or ``NAME@DOSE`` labels). Default: every compound the
            model's compound features resolve, at ``dose`` (none for a model without compounds).
        dose
            Dose of the default compound candidates and of names given without ``@DOSE``.
        max_genes
            Cap on the default gene candidates (see ``genes``; the data's own genetic targets are
            always kept).
        overlap, readout_share
            The tautology guard (:mod:`bioworld.query._candidates`): a silence of the goal entity
            or of an entity whose panel genes overlap it by ``overlap`` (Jaccard, or that share of
            either gene set), and a knockout of genes carrying ``readout_share`` of the goal
            readout's weight, get ``flag`` = ``readout`` with the reason in ``flag_reason`` and
            are ranked after every unflagged row.
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
        from bioworld.query._planner import prioritize

        eng = self.engine
        for what, given in (("genes", genes), ("entities", entities)):
            listed = [] if given is None or isinstance(given, str) else [str(v) for v in given]
            dups = sorted({v for v in listed if listed.count(v) > 1})
            if dups:
                raise BioworldError(f"{what} lists {dups[:5]} more than once; expected each candidate once (a repeat "
                                    f"would be ranked twice). Fix: remove the repeats" + (" (CLI: --genes)." if what == "genes" else "."))
        x = self.reference if cells is None else self._cells_to_std(cells)
        n_total = len(x)
        if len(x) > max_cells:
            x = x[np.sort(np.random.default_rng(self.train_config.seed).choice(len(x), max_cells, replace=False))]
        from bioworld.query._candidates import default_candidates, unlabelled_genes

        gene_list, compound_list = default_candidates(eng, goal, panel=self.genes, genes=genes, compounds=compounds,
                                                      dose=dose, max_genes=max_genes)
        return prioritize(
            eng, x, goal, genes=gene_list, compounds=compound_list, panel=self.genes,
            entities=list(self.entity_names) if entities is None else list(entities), pairs=pairs,
            gene_pairs_top=gene_pairs_top, n_boot=n_boot, screen_cells=screen_cells, refine_top=refine_top,
            seed=self.train_config.seed, overlap=overlap, readout_share=readout_share,
            provenance={"model": self.describe(), "n_cells_given": int(n_total), "scale": self.scale_name,
                        **({"gene_table_names_not_labels": unlabelled_genes(eng.space)} if genes is None else {})},
        )

    @torch.no_grad()
    def get_entity_latents(self, adata: ad.AnnData) -> np.ndarray:
        """Entity latents ``[cells, E, D]`` of the (context) encoder for ``adata``'s cells."""
        m = self._require_module()
        dev = next(m.parameters()).device
        x = torch.from_numpy(self._cells_to_std(adata))
        return np.concatenate([m.encode(x[s:s + 2048].to(dev)).cpu().numpy() for s in range(0, len(x), 2048)])

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
        tensors = {f"module.{k}": v.detach().cpu() for k, v in m.state_dict().items()}
        tensors.update({
            "norm.mu": torch.from_numpy(self.mu), "norm.sd": torch.from_numpy(self.sd),
            "reference": torch.from_numpy(self.reference), "membership": torch.from_numpy(self.membership),
        })
        space_tensors, space_meta = self.space.state()  # gene_features; actions, gene_bank, gene_feature_genes, smiles
        tensors.update({k: torch.from_numpy(v) for k, v in space_tensors.items()})
        effects = getattr(self, "single_effects", None) or {}
        if effects:
            tensors["single_effects"] = torch.from_numpy(np.stack([v[1] for v in effects.values()]))
        tr = self.train_result
        meta = {
            "model_config": self.model_config.to_dict(), "train_config": self.train_config.to_dict(),
            "registration": self.registration.to_dict(), "var_names": self.var_names, "genes": self.genes,
            "entities": self.entity_set.to_dict(), "entity_hash": self.entity_set.hash(),
            "entity_names": self.entity_names, "control": self.control, **space_meta,
            "single_effect_labels": [v[0] for v in effects.values()],
            "train_labels": self.train_labels, "holdout": self.holdout,
            "findings": self.findings, "meta": self.meta,
            "train_result": None if tr is None else {"steps": tr.steps, "wall_s": tr.wall_s,
                                                      "cells_per_s": tr.cells_per_s, "history": tr.history,
                                                      "resumed_from": tr.resumed_from, "validation": tr.validation},
        }
        save_checkpoint(d, tensors, meta)
        from bioworld.report.card import write_model_card

        write_model_card(self, d)  # README.md: data hash, config, training fit, held-out metrics, licences
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "WorldModel":
        """Rebuild a trained model from its directory; refuses corrupt or inconsistent checkpoints."""
        from bioworld.actions._space import ActionSpace
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
            self.findings, self.meta = list(meta["findings"]), dict(meta["meta"])
            gene_genes = list(meta["gene_feature_genes"])
            space_meta = {k: meta[k] for k in ("actions", "gene_bank", "gene_feature_genes", "smiles",
                                               "compound_knowledge_names", "compound_kb_dim", "compound_seen",
                                               "compound_user_targets") if k in meta}
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
        expect = {"norm.mu": (G,), "norm.sd": (G,), "gene_features": (len(gene_genes), self.model_config.gene_feature_dim),
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
        try:
            self.space = ActionSpace.from_state(
                {k: tensors[k].numpy() for k in ("gene_features", "compound_knowledge") if k in tensors}, space_meta,
                control=self.control,
                entity_set=self.entity_set, entity_names=self.entity_names, panel_genes=self.genes,
                max_components=self.model_config.max_components)
        except BioworldError as e:
            raise CheckpointError(f"{directory}: bioworld.json holds an action the parser refuses ({e}); the checkpoint "
                                  "is corrupt or was edited") from None
        eff_labels = list(meta.get("single_effect_labels", []))
        eff = tensors.get("single_effects")
        if eff_labels and (eff is None or tuple(eff.shape) != (len(eff_labels), G)) or (eff is not None and not eff_labels):
            raise CheckpointError(
                f"{directory}: tensor 'single_effects' has shape {None if eff is None else tuple(eff.shape)}, expected "
                f"({len(eff_labels)}, {G}) for the {len(eff_labels)} labels in bioworld.json; the checkpoint is corrupt"
            )
        self.single_effects = {}
        for lab, row in zip(eff_labels, [] if eff is None else eff.numpy()):
            if lab not in self.train_labels:
                raise CheckpointError(f"{directory}: single effect {lab!r} is not a training label; the checkpoint is corrupt")
            comps = self.actions[lab].components
            if len(comps) != 1:
                raise CheckpointError(f"{directory}: single effect {lab!r} is not a single perturbation; the checkpoint is corrupt")
            self.single_effects[comps[0]] = (lab, row)
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
        self._engine = None
        self._X = None
        tr = meta.get("train_result")
        from bioworld.train import TrainResult

        self.train_result = None if tr is None else TrainResult(**tr)
        from bioworld.report._evaluation import load_evaluation

        self.evaluation = load_evaluation(directory)  # held-out table of 'bioworld evaluate', or None
        return self

    def __repr__(self) -> str:
        status = "trained" if self.module is not None else "untrained"
        return (f"WorldModel({status}: {len(self.genes)} genes, {len(self.entity_names)} entity slots, "
                f"{len(self.train_labels) - 1} training perturbations, holdout={len(self.holdout)})")


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
