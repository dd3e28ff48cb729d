"""``bw.WorldModel``: the facade that ties data, entities, actions, model, training and queries.

>>> import bioworld as bw
>>> adata = bw.data.load_papalexi()
>>> wm = bw.WorldModel(adata, perturbation_key="perturbation", control="control")
>>> wm.train()
>>> pred = wm.predict(["IFNGR1", "STAT1+IRF1"])     # AnnData: X = predicted mean, layers['delta']
>>> wm.save("model_dir"); wm2 = bw.WorldModel.load("model_dir")

The work is done below the facade: :func:`bioworld.data._prepare.prepare` (registration, scaling,
reference cells), :func:`bioworld.entities._slots.build_slots`, :func:`bioworld.actions._build.build_actions`,
:mod:`bioworld.train.setup` (configs, sampler, data-sized training), :class:`bioworld.train.state.ModelState`
(what a model is; the checkpoint format) and :mod:`bioworld.query` (the engine and the query verbs).
"""

from __future__ import annotations

import os
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd

from bioworld.errors import BioworldError, CheckpointError
from bioworld.train.fit_check import FIT_CHECK_PERTURBATIONS, WEAK_FIT_RATIO, train_until_fit  # noqa: F401 (re-exported)
from bioworld.train.state import ModelState

INACTIVE_QUANTILE = 0.01  # "off" = the entity's activity in the lowest 1% of reference cells


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

    The model's state (configs, genes, slots, statistics, actions, weights) is one
    :class:`~bioworld.train.state.ModelState`; its fields are attributes of the model.
    """

    def __init__(self, adata: ad.AnnData, *, entities: Any = None, perturbation_key: str = "perturbation",
                 control: str = "control", dose_key: str | None = None, compound_id_key: str | None = None,
                 smiles: str | os.PathLike | dict[str, str] | None = None, gene_symbols_key: str | None = None,
                 input: str = "counts", replicate_key: str | None = None, id_map: Any = None,
                 min_cells_per_group: int | None = None, min_genes_per_entity: int = 3, nmf_programs: int = 4,
                 holdout: Iterable[str] | Any = (), config: Any = None, model_config: dict[str, Any] | None = None,
                 knowledge: Any = True, compound_targets: Any = None) -> None:
        from bioworld.actions._build import build_actions
        from bioworld.data._prepare import prepare
        from bioworld.entities._slots import build_slots
        from bioworld.train._threads import pin_threads
        from bioworld.train.setup import model_config_for, resolve_train_config

        train_config = resolve_train_config(config)
        pin_threads(train_config.resolved_threads())  # setup numerics (features, NMF) too
        data = prepare(adata, perturbation_key=perturbation_key, control=control, dose_key=dose_key,
                       compound_id_key=compound_id_key, gene_symbols_key=gene_symbols_key, input=input,
                       replicate_key=replicate_key, id_map=id_map, min_cells_per_group=min_cells_per_group,
                       seed=train_config.seed)
        slots = build_slots(entities, data.genes, min_genes=min_genes_per_entity, nmf_programs=nmf_programs,
                            nmf_input=data.nmf_input, seed=train_config.seed)
        data.release()
        reg = data.registration
        acts = build_actions(list(reg.perturbations), control=control, dropped=reg.dropped, holdout=holdout,
                             perturbation_key=perturbation_key, entity_set=slots.entity_set,
                             entity_names=slots.names, genes=data.genes, knowledge=knowledge, smiles=smiles,
                             adata=adata, compound_id_key=compound_id_key, compound_targets=compound_targets)
        state = ModelState(
            model_config=model_config_for(acts.space, n_genes=len(data.genes), n_entities=len(slots.names),
                                          overrides=model_config),
            train_config=train_config, registration=reg, var_names=data.var_names, genes=data.genes,
            entity_set=slots.entity_set, entity_names=slots.names, membership=slots.membership, control=control,
            mu=data.mu, sd=data.sd, reference=data.reference, space=acts.space, train_labels=acts.train_labels,
            holdout=acts.holdout, findings=list(reg.findings) + slots.findings + acts.findings,
            meta={"perturbation_key": perturbation_key, "replicate_key": data.replicate_key, **acts.meta},
        )
        self._adopt(state, data)

    def _adopt(self, state: ModelState, data: Any) -> None:
        """The one constructor body: the model is ``state`` (+ its training data, None after ``load``)."""
        self._state, self._data, self._engine = state, data, None

    # ------------------------------------------------------------ actions and data
    actions = property(lambda self: self.space.actions, doc="Label -> parsed action of every label in the data (control first).")
    gene_bank = property(lambda self: self.space.gene_bank, doc="The training genetic targets (the retrieval bank).")
    smiles = property(lambda self: {} if self.space.compounds is None else dict(self.space.compounds.smiles))
    gene_features = property(lambda self: self.space.genes, doc="The gene feature source (callable on a gene list).")
    _X = property(lambda self: None if self._data is None else self._data.X)  # standardised training data (None after load)
    _labels = property(lambda self: None if self._data is None else self._data.labels)
    _replicate = property(lambda self: None if self._data is None else self._data.replicate)

    def _encode(self, actions: Sequence[Any]):
        return self.space.encode(actions)

    # ------------------------------------------------------------------ train
    def train(self, *, progress: bool = True, state_dir: str | os.PathLike | None = None, **overrides: Any) -> "WorldModel":
        """Train the JEPA. ``overrides`` replace :class:`TrainConfig` fields (e.g. ``max_steps=300``)."""
        from bioworld.train import TrainConfig
        from bioworld.train.fit_check import record_fit
        from bioworld.train.setup import anchor_effects, train_state

        if self._data is None:
            raise BioworldError("this model was loaded from disk without its training data; create a new WorldModel to train")
        if overrides:
            self.train_config = TrainConfig.from_dict({**self.train_config.to_dict(), **overrides})
        train_state(self._state, self._data, state_dir=state_dir, progress=progress)
        self.single_effects, self.combination_prior, self._engine = {}, None, None
        self.silence_heads = {}
        if self._data.in_memory:
            from bioworld.query._response import fit_silence_heads

            record_fit(self.training_fit(), self.meta, self.findings)  # the model's own answers, before anchoring
            anchor_effects(self._state, self._data)
            self._engine = None  # the query engine is rebuilt with them
            self.silence_heads, self.meta["silence_heads"] = fit_silence_heads(
                self.engine, self._X, self._labels, self.control, self.train_labels)
            self._engine = None  # and with the heads of untrained silences
        return self

    def training_fit(self, max_perturbations: int = FIT_CHECK_PERTURBATIONS) -> pd.DataFrame:
        """How well the trained model reproduces perturbations it was trained on: for up to
        ``max_perturbations`` of them (most cells first), observed vs ``predict``'s mean delta on the 20
        genes each moves most (:func:`bioworld.train.fit_check.training_fit`). Needs the training data
        in memory (not after ``load``, not for backed data)."""
        from bioworld.train.fit_check import training_fit

        if self._data is None or not self._data.in_memory:
            raise BioworldError("training_fit needs the training data in memory; call it on the model you trained "
                                "(not after load, not for backed data)")
        self._require_module()
        return training_fit(self._X, self._labels, control=self.control, train_labels=self.train_labels, sd=self.sd,
                            predict_delta=lambda labs: self.predict(labs).layers["delta"],
                            max_perturbations=max_perturbations)

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
        self._require_module().to(replace(self.train_config, device=str(device)).resolved_device())
        return self

    @property
    def engine(self):
        """The query engine of the trained module (:class:`bioworld.query.engine.Engine`), built on first use."""
        m = self._require_module()
        if self._engine is None or self._engine.module is not m:
            from bioworld.query.engine import Engine
            self._engine = Engine(m, self.space, self.reference, self.membership, self.train_labels,
                                  inactive_quantile=INACTIVE_QUANTILE,
                                  single_effects={c: row for c, (_, row) in self.single_effects.items()},
                                  combination_prior=self.combination_prior,
                                  silence_heads={self.entity_names.index(n): v for n, v in self.silence_heads.items()})
        self._engine.threads = self.train_config.query_threads()
        return self._engine

    def _view(self):
        from bioworld.query._verbs import ModelView
        return ModelView(self.var_names, self.entity_names, self.genes, self._to_scale, self.scale_name,
                         self._state.answer_provenance(), self.train_config.seed, dict(self.registration.dropped))

    def _to_scale(self, x_std: np.ndarray) -> np.ndarray:
        return x_std * self.sd + self.mu

    scale_name = property(lambda self: "log1p CP10k" if self.registration.input == "counts" else "input (log) scale",
                          doc="The scale answers are on (the model's scale).")

    def _cells_to_std(self, cells: ad.AnnData) -> np.ndarray:
        from bioworld.data._prepare import cells_to_std

        return cells_to_std(cells, self.registration, self.var_names, self.mu, self.sd)

    def predict(self, perturbations: Sequence[str] | str, *, cells: ad.AnnData | None = None,
                context: str | None = None, compounds: Mapping[str, str] | None = None,
                compound_targets: Any = None) -> ad.AnnData:
        """Predicted mean expression per perturbation, over ``cells`` (default: the reference control cells).

        ``compounds`` (name -> SMILES) and ``compound_targets`` (a TSV/CSV path with columns
        ``compound, target_gene`` or a dict name -> genes) describe compounds the model has not met;
        any compound the bundled knowledge resolves by name needs neither. ``context`` (an atlas
        cell line / cell type, e.g. ``'A498'``) answers with the pretrained atlas model instead
        (:func:`bioworld.query.predict_in_context`).

        Returns AnnData: ``obs_names`` = the labels in order, ``var_names`` = the training data's, ``X`` =
        predicted mean expression on the model's scale (log1p CP10k for counts input, else the input
        scale), ``layers['delta']`` = X minus the predicted control, ``obs['n_cells']`` = cells averaged.
        """
        from bioworld.query._verbs import query_labels

        labels = query_labels(perturbations, "perturbations", "STAT1")
        if context is not None:
            from bioworld.query._atlas import predict_in_context
            from bioworld.train.pretrain import load_pretrained

            return predict_in_context(load_pretrained(), labels, context, unread={
                "cells": cells, "compounds": compounds or None, "compound_targets": compound_targets})
        from bioworld.query._verbs import predict_means

        eng, given = self.engine, None
        if compounds or compound_targets is not None:
            from bioworld.query._atlas import engine_with_compounds

            eng, given = engine_with_compounds(eng, compounds, compound_targets)
        return predict_means(eng, self._view(), labels, [self.parse(lab) for lab in labels],
                             lambda: self.reference if cells is None else self._cells_to_std(cells), targets=given)

    def counterfactual(self, cells: ad.AnnData, interventions: Sequence[str] | str) -> ad.AnnData:
        """Per-cell predictions for each intervention (``silence:ENTITY``, ``ko:GENE``, ``kd:GENE:0.5``,
        ``act:GENE``, ``NAME@DOSE``, combinations with ``+``) on ``cells`` (the model's gene panel, any
        order; counts or log as trained).

        Returns AnnData with one row per (intervention, cell), intervention-major
        (:func:`bioworld.query._anndata.counterfactual_adata`): ``X`` predicted expression on the
        model's scale, ``layers['delta']`` vs the same cells' predicted unperturbed state; ``obs`` =
        the cells' own columns (cell types, ...) plus ``bw_intervention`` and ``bw_cell``; ``obsm`` =
        the cells' embeddings (``X_umap``, ...) plus ``obsm['bw_entity_shift']``, a DataFrame
        (columns = entity names) of latent shifts in units of slot spread;
        ``uns['bioworld']['entity_effects'][SPEC]`` a DataFrame ``entity, shift, share`` ordered by
        shift, and ``uns['bioworld']['entity_names']``. Writable with plain ``write_h5ad``.
        """
        from bioworld.query._verbs import counterfactual_cells, query_labels

        eng = self.engine
        specs = query_labels(interventions, "interventions", "silence:HALLMARK_INTERFERON_GAMMA_RESPONSE")
        return counterfactual_cells(eng, self._view(), cells, lambda: self._cells_to_std(cells), specs,
                                    [self.parse(s) for s in specs])

    def prioritize(self, cells: ad.AnnData | None, goal: str, **options: Any):
        """Rank single and paired interventions by how well they move ``cells`` (``None``: the model's
        reference control cells) towards ``goal`` (``down:ENTITY``, ``up:ENTITY``, ``toward:control``).

        Options and what is exact vs screened: :func:`bioworld.query._verbs.prioritize_cells`. Returns a
        :class:`bioworld.query.PrioritizationResult`."""
        from bioworld.query._verbs import check_prioritize_options, prioritize_cells

        check_prioritize_options(options)
        eng = self.engine
        return prioritize_cells(eng, self._view(), lambda: self.reference if cells is None else self._cells_to_std(cells),
                                goal, **options)

    def get_entity_latents(self, adata: ad.AnnData) -> np.ndarray:
        """Entity latents ``[cells, E, D]`` of the (context) encoder for ``adata``'s cells."""
        from bioworld.query._verbs import entity_latents

        return entity_latents(self._require_module(), self._cells_to_std(adata))

    def describe(self) -> dict[str, Any]:
        """Sizes, entity hash, labels, seed and training time (the provenance answers carry)."""
        return self._state.describe()

    # -------------------------------------------------------------- save/load
    def save(self, directory: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Write ``model.safetensors`` + ``bioworld.json`` (atomic; no pickled code) and the model card."""
        from bioworld.report.card import data_hash, write_model_card
        from bioworld.train.checkpoint import META, save_checkpoint

        self._require_module()
        d = Path(directory)
        if not overwrite and (d / META).exists():
            raise CheckpointError(f"{str(d)!r} already holds a model; pass overwrite=True (CLI: --overwrite) to replace it")
        if "data_hash" not in self.meta and isinstance(self._X, np.ndarray):
            self.meta["data_hash"] = data_hash(self._X, self._labels)
        save_checkpoint(d, *self._state.checkpoint())
        write_model_card(self, d)  # README.md: data hash, config, training fit, held-out metrics, licences
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "WorldModel":
        """Rebuild a trained model from its directory; refuses corrupt or inconsistent checkpoints."""
        from bioworld._checkpoint_schema import validate_model_meta
        from bioworld.report._evaluation import load_evaluation
        from bioworld.train.checkpoint import load_checkpoint

        tensors, meta = load_checkpoint(directory)
        validate_model_meta(meta, tensors, directory)  # every field, before anything is built
        state = ModelState.from_checkpoint(tensors, meta, directory)
        state.evaluation = load_evaluation(directory)  # held-out table of 'bioworld evaluate', or None
        self = cls.__new__(cls)
        self._adopt(state, None)
        return self

    def __repr__(self) -> str:
        status = "trained" if self.module is not None else "untrained"
        return (f"WorldModel({status}: {len(self.genes)} genes, {len(self.entity_names)} entity slots, "
                f"{len(self.train_labels) - 1} training perturbations, holdout={len(self.holdout)})")


def _state_attribute(name: str) -> property:
    return property(lambda self: getattr(self._state, name), lambda self, value: setattr(self._state, name, value),
                    doc=f"``ModelState.{name}`` of this model (:class:`bioworld.train.state.ModelState`).")


for _field in fields(ModelState):  # wm.genes, wm.module, wm.train_config, ...: the state's fields
    setattr(WorldModel, _field.name, _state_attribute(_field.name))
