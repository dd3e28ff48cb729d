"""Baselines every world-model claim is measured against, and the split-half noise ceiling.

All baselines share one interface on per-perturbation mean deltas (observed mean minus control
mean, ``[G]`` on the model's log scale)::

    b = MeanOfTrain().fit(train_deltas, context)     # train_deltas: {label: [G] delta}
    pred = b.predict(["STAT1", "IRF1"])              # {label: [G] delta}

``context`` (a `FitContext`) carries what some baselines need beyond the deltas: training cells
for a gene embedding, knowledge for target embeddings, SMILES for compounds. Labels are parsed only
with :func:`bioworld.actions.parse_action`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bioworld.errors import BioworldError, UnknownPerturbationError
from bioworld.errors import user_stacklevel

__all__ = [
    "Additive",
    "Baseline",
    "FitContext",
    "KnowledgeNeighbours",
    "LinearEmbedding",
    "MeanOfTrain",
    "NearestCompound",
    "NoChange",
    "TargetEmbedding",
    "knowledge_embedding",
    "split_half_ceiling",
    "split_half_deltas",
]


@dataclass
class FitContext:
    """What a baseline may use besides the training deltas (nothing of the test perturbations).

    Attributes
    ----------
    control
        Control label (parsed as control, never predicted).
    expression
        ``[cells, G]`` training cells on the log scale (controls + training perturbations only),
        for `LinearEmbedding`'s gene embedding; without it the embedding comes from the deltas.
    target_embedding
        A `TargetEmbedding` (gene -> vector from prior knowledge) for `LinearEmbedding`.
    smiles
        ``{compound name: SMILES}`` for `NearestCompound`.
    """

    control: str = "control"
    expression: np.ndarray | None = None
    target_embedding: "TargetEmbedding | None" = None
    smiles: Mapping[str, str] | None = None
    knowledge: Any = None  # a bioworld.knowledge.KnowledgeBase, for KnowledgeNeighbours


def _parse(label: str, control: str):
    from bioworld.actions import parse_action

    return parse_action(label, control_labels=(control, "control"))


def _stack(deltas: Mapping[str, Any]) -> tuple[list[str], np.ndarray]:
    if not deltas:
        raise BioworldError("no training deltas given; expected {label: [G] delta} for at least one perturbation")
    labels = list(deltas)
    Y = np.stack([np.asarray(deltas[lab], dtype=np.float64) for lab in labels])  # [P, G]
    if Y.ndim != 2 or not np.isfinite(Y).all():
        raise BioworldError(f"training deltas form an array of shape {Y.shape} with non-finite values or ragged rows; "
                            "expected finite [G] vectors of one length")
    return labels, Y


class Baseline:
    """Common interface: ``fit(train_deltas, context) -> self``; ``predict(labels) -> {label: [G]}``."""

    name: str = "Baseline"

    def fit(self, train_deltas: Mapping[str, Any], context: FitContext | None = None) -> "Baseline":
        self.context = context or FitContext()
        self.train_labels, self.Y = _stack(train_deltas)  # [P, G]
        self._fit()
        return self

    def _fit(self) -> None:
        pass

    def _require_fit(self) -> None:
        if not hasattr(self, "Y"):
            raise BioworldError(f"{self.name} is not fitted; call .fit(train_deltas, context) first")

    def predict(self, labels: Sequence[str]) -> dict[str, np.ndarray]:
        self._require_fit()
        if isinstance(labels, str):
            labels = [labels]
        return {lab: self._predict_one(lab).astype(np.float32) for lab in labels}

    def _predict_one(self, label: str) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.name}()"


class NoChange(Baseline):
    """Predicts no effect: delta = 0 for every perturbation."""

    name = "NoChange"

    def _predict_one(self, label: str) -> np.ndarray:
        return np.zeros(self.Y.shape[1])


class MeanOfTrain(Baseline):
    """Mean delta of the training perturbations.

    For a single compound at a dose (``NAME@DOSE``) the mean is over the training compound labels at
    that dose (relative tolerance 1e-6); when no training label has that dose, over those at the
    nearest dose (in log10(dose + 1e-3)). Every other label gets the mean over all training labels.
    """

    name = "MeanOfTrain"

    def _fit(self) -> None:
        self.mean = self.Y.mean(0)
        groups: dict[float, list[np.ndarray]] = {}
        for lab, y in zip(self.train_labels, self.Y):
            a = _parse(lab, self.context.control)
            if len(a.components) == 1 and a.components[0].kind == "compound" and a.components[0].dose is not None:
                groups.setdefault(float(a.components[0].dose), []).append(y)
        self.by_dose: dict[float, np.ndarray] = {d: np.mean(v, 0) for d, v in groups.items()}

    def _predict_one(self, label: str) -> np.ndarray:
        a = _parse(label, self.context.control)
        if self.by_dose and len(a.components) == 1 and a.components[0].kind == "compound" \
                and a.components[0].dose is not None:
            doses = np.array(sorted(self.by_dose))
            d = float(a.components[0].dose)
            near = doses[np.argmin(np.abs(np.log10(doses + 1e-3) - np.log10(d + 1e-3)))]
            return self.by_dose[float(near)]
        return self.mean


class Additive(Baseline):
    """Combinations as the sum of their components' observed single deltas.

    A label whose every component was seen alone in training is predicted as the sum of those
    single deltas (a seen single predicts itself). A component never seen alone raises
    `UnknownPerturbationError` (this baseline has no way to guess it).
    """

    name = "Additive"

    def _fit(self) -> None:
        self.singles: dict[str, np.ndarray] = {}
        for lab, y in zip(self.train_labels, self.Y):
            a = _parse(lab, self.context.control)
            if len(a.components) == 1:
                self.singles[str(a.components[0])] = y

    def _predict_one(self, label: str) -> np.ndarray:
        a = _parse(label, self.context.control)
        keys = [str(c) for c in a.components]
        missing = [k for k in keys if k not in self.singles]
        if missing:
            raise UnknownPerturbationError(
                f"Additive cannot predict {label!r}: components {missing} were not seen alone in training; "
                f"expected combinations of trained singles (e.g. {sorted(self.singles)[:4]})"
            )
        return np.sum([self.singles[k] for k in keys], axis=0)


# --------------------------------------------------------------------------- knowledge embedding
@dataclass
class TargetEmbedding:
    """Gene -> ``[d]`` vector from prior knowledge (rows L2-normalised; genes in no set are unknown)."""

    genes: list[str]
    table: np.ndarray  # [n_genes, d]
    sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pos = {g: i for i, g in enumerate(self.genes)}

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def knows(self, gene: str) -> bool:
        return gene in self._pos

    def __call__(self, genes: Sequence[str]) -> np.ndarray:
        """``[len(genes), d]``; unknown genes get zero rows (check `knows` first to tell them apart)."""
        out = np.zeros((len(genes), self.dim))
        for i, g in enumerate(genes):
            if g in self._pos:
                out[i] = self.table[self._pos[g]]
        return out


def knowledge_embedding(entity_sets: Sequence[Any], *, dim: int = 32, seed: int = 0) -> TargetEmbedding:
    """Embed every gene of the given entity sets by its membership, reduced with TruncatedSVD.

    The membership matrix (genes x features) follows
    :func:`bioworld.entities.gene_membership_features`: a gene's weight in an entity divided by the
    entity's largest ``|weight|``, plus one ``is_tf`` column per regulon marking its TF. It is built
    sparse over *all* genes of the sets (so the SVD is fitted on all genes' membership, not only on
    the perturbation targets), columns are scaled by ``1/sqrt(set size)`` so small specific sets count
    more than huge ones, and rows of the ``dim``-component SVD are L2-normalised.
    """
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD

    from bioworld.entities import regulon_tf

    sets = list(entity_sets)
    if not sets:
        raise BioworldError("knowledge_embedding got no entity sets; expected e.g. [load_bundled('hallmark'), ...]")
    genes = sorted(set().union(*[set(s.genes()) for s in sets]))
    pos = {g: i for i, g in enumerate(genes)}
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    col = 0
    for s in sets:
        for e in s:
            w = np.asarray(e.weights, dtype=np.float64)
            scale = float(np.abs(w).max()) or 1.0
            for g, wi in zip(e.genes, w):
                rows.append(pos[g]); cols.append(col); vals.append(wi / scale)
            col += 1
            tf = regulon_tf(e.name)
            if tf is not None and tf in pos:
                rows.append(pos[tf]); cols.append(col); vals.append(1.0)
                col += 1
    M = sp.csr_matrix((vals, (rows, cols)), shape=(len(genes), col), dtype=np.float64)  # [genes, F]
    size = np.asarray((M != 0).sum(0)).ravel()
    M = M @ sp.diags(1.0 / np.sqrt(np.maximum(size, 1)))
    k = max(1, min(dim, min(M.shape) - 1))
    Z = TruncatedSVD(n_components=k, random_state=seed, algorithm="randomized", n_iter=7).fit_transform(M)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True).clip(1e-12)
    return TargetEmbedding(genes, Z.astype(np.float32), sorted({e.source for s in sets for e in s}))


def _is_genetic(label: str, control: str) -> bool:
    return all(c.kind in ("ko", "kd", "act") for c in _parse(label, control).components)


class LinearEmbedding(Baseline):
    """Linear model ``Y = G W P^T + b`` (Ahlmann-Eltze, Huber & Anders, Nat Methods 2025 style).

    - ``Y`` ``[G, P]``: training deltas (genes x perturbations); ``b`` ``[G]``: their mean (so a
      perturbation with no knowledge is predicted as `MeanOfTrain`).
    - ``G`` ``[G, K]``: gene embedding, the top-``n_gene_pcs`` principal axes of the training cells
      (``context.expression``, genes as variables) or, without cells, of the training deltas.
    - ``P`` ``[P, d]``: perturbation embedding from prior knowledge (``context.target_embedding``, see
      `knowledge_embedding`): the sum of the component genes' vectors, so targets outside the
      measured panel and never perturbed in training still have one.
    - ``W`` ``[K, d]``: ridge closed form
      ``W = (G^T G + lam I)^-1 G^T (Y - b) P (P^T P + lam I)^-1``.

    Only genetic training labels (every component ``ko``/``kd``/``act``) are fitted on; others
    (e.g. ``silence:ENTITY``, compounds) are listed in ``skipped_``. Attributes after predict:
    ``unknown_`` lists predicted labels with no known component gene.
    """

    name = "LinearEmbedding"

    def __init__(self, *, n_gene_pcs: int = 10, ridge: float = 0.1) -> None:
        if n_gene_pcs < 1 or ridge < 0:
            raise BioworldError(f"n_gene_pcs={n_gene_pcs}, ridge={ridge}; expected n_gene_pcs >= 1 and ridge >= 0")
        self.n_gene_pcs = int(n_gene_pcs)
        self.ridge = float(ridge)
        self.unknown_: list[str] = []

    def _embed(self, label: str) -> tuple[np.ndarray, bool]:
        emb = self.context.target_embedding
        a = _parse(label, self.context.control)
        genes = [c.target for c in a.components if c.kind in ("ko", "kd", "act")]
        if len(genes) != len(a.components):
            raise UnknownPerturbationError(
                f"LinearEmbedding embeds genetic perturbations only; {label!r} has non-gene components. "
                "Use MeanOfTrain / NearestCompound for compounds."
            )
        vec = emb(genes)
        strength = np.array([c.strength for c in a.components])[:, None]
        known = any(emb.knows(g) for g in genes)
        return (vec * strength).sum(0), known

    def _fit(self) -> None:
        if self.context.target_embedding is None:
            raise BioworldError(
                "LinearEmbedding needs context.target_embedding (prior-knowledge gene vectors); "
                "build one with knowledge_embedding([load_bundled('hallmark'), ...])"
            )
        genetic = [i for i, lab in enumerate(self.train_labels) if _is_genetic(lab, self.context.control)]
        if not genetic:
            raise BioworldError("LinearEmbedding found no genetic (ko/kd/act) training perturbation to fit on")
        self.skipped_ = [lab for i, lab in enumerate(self.train_labels) if i not in set(genetic)]
        labels = [self.train_labels[i] for i in genetic]
        Yt = self.Y[genetic].T  # [G, P]
        self.b = Yt.mean(1)  # [G]
        Yc = Yt - self.b[:, None]
        X = self.context.expression
        if X is not None:
            X = np.asarray(X, dtype=np.float64)
            if X.ndim != 2 or X.shape[1] != Yt.shape[0]:
                raise BioworldError(f"context.expression has shape {X.shape}; expected [cells, {Yt.shape[0]}]")
            Xc = X - X.mean(0)
            _, _, Vt = np.linalg.svd(Xc, full_matrices=False)
            Gm = Vt[: self.n_gene_pcs].T  # [G, K]
        else:
            U, _, _ = np.linalg.svd(Yc, full_matrices=False)
            Gm = U[:, : self.n_gene_pcs]
        P = np.stack([self._embed(lab)[0] for lab in labels])  # [P, d]
        K, d = Gm.shape[1], P.shape[1]
        left = np.linalg.solve(Gm.T @ Gm + self.ridge * np.eye(K), Gm.T @ Yc @ P)  # [K, d]
        self.W = np.linalg.solve((P.T @ P + self.ridge * np.eye(d)).T, left.T).T  # [K, d]
        self.Gm = Gm

    def _predict_one(self, label: str) -> np.ndarray:
        p, known = self._embed(label)
        if not known and label not in self.unknown_:
            self.unknown_.append(label)
        return self.Gm @ self.W @ p + self.b

    def predict(self, labels: Sequence[str]) -> dict[str, np.ndarray]:
        out = super().predict(labels)
        if self.unknown_:
            warnings.warn(
                f"LinearEmbedding: no prior knowledge for {self.unknown_[:5]} (in no gene set / regulon); "
                "their prediction is the training mean",
                stacklevel=user_stacklevel(),
            )
        return out


class NearestCompound(Baseline):
    """Unseen compound = the observed delta of the most similar training compound at the same dose.

    Similarity is the Tanimoto coefficient of Morgan fingerprints (radius 2, 1024 bits;
    :class:`bioworld.actions.CompoundFeaturizer`) from ``context.smiles``. Candidates are training
    single-compound labels with a SMILES at the query's dose (relative tolerance 1e-6); when none
    has that dose, the most similar compound's label at the nearest dose (log10 scale) is used.
    Attribute ``neighbours_``: ``{label: (training label, tanimoto)}`` of the last predictions.
    """

    name = "NearestCompound"

    def _fit(self) -> None:
        from bioworld.actions import CompoundFeaturizer

        if not self.context.smiles:
            raise BioworldError("NearestCompound needs context.smiles ({compound name: SMILES})")
        self.featurizer = CompoundFeaturizer(dict(self.context.smiles))
        self.entries: list[tuple[str, float, np.ndarray, str]] = []  # (compound, dose, delta, label)
        for lab, y in zip(self.train_labels, self.Y):
            a = _parse(lab, self.context.control)
            if len(a.components) == 1 and a.components[0].kind == "compound" and a.components[0].dose is not None:
                c = a.components[0]
                if self.featurizer.knows(c.target):
                    self.entries.append((c.target, float(c.dose), y, lab))
        if not self.entries:
            raise BioworldError("NearestCompound found no training compound label with a SMILES; check context.smiles")
        self.neighbours_: dict[str, tuple[str, float]] = {}

    def _predict_one(self, label: str) -> np.ndarray:
        a = _parse(label, self.context.control)
        if len(a.components) != 1 or a.components[0].kind != "compound" or a.components[0].dose is None:
            raise UnknownPerturbationError(f"NearestCompound predicts single 'NAME@DOSE' labels; got {label!r}")
        c = a.components[0]
        if not self.featurizer.knows(c.target):
            raise UnknownPerturbationError(f"NearestCompound: compound {c.target!r} has no SMILES in context.smiles")
        dose = float(c.dose)
        same = [e for e in self.entries if np.isclose(e[1], dose, rtol=1e-6, atol=0) and e[0] != c.target]
        pool = same or [e for e in self.entries if e[0] != c.target]
        if not pool:
            raise UnknownPerturbationError(f"NearestCompound: no other training compound to compare {c.target!r} with")
        sims = {name: self.featurizer.tanimoto(c.target, name) for name in {e[0] for e in pool}}
        best = max(sorted(sims), key=lambda n: sims[n])
        cands = [e for e in pool if e[0] == best]
        ld = np.log10(dose + 1e-3)
        e = min(cands, key=lambda e: abs(np.log10(e[1] + 1e-3) - ld))
        self.neighbours_[label] = (e[3], sims[best])
        return e[2]


class KnowledgeNeighbours(Baseline):
    """Unseen perturbation = the mean effect plus a knowledge-weighted mix of training deviations.

    Genes and compounds share one feature space (:class:`bioworld.knowledge.KnowledgeBase`: STRING /
    OmniPath neighbourhoods, atlas signatures, a compound's targets). For a single-target label the
    weights are ``softmax(cosine / temperature)`` over the training labels of the same kind with any
    knowledge; each contributes its deviation from the mean (for compounds: from the per-dose mean, at
    the training label's dose nearest the query's). A label without knowledge gets the mean. Measures
    how much the knowledge alone says, with no model in between.
    """

    name = "KnowledgeNeighbours"

    def __init__(self, *, temperature: float = 0.1) -> None:
        self.temperature = float(temperature)

    def _fit(self) -> None:
        if self.context.knowledge is None:
            raise BioworldError("KnowledgeNeighbours needs context.knowledge (a bioworld.knowledge.KnowledgeBase)")
        self._mean = MeanOfTrain().fit(dict(zip(self.train_labels, self.Y)), self.context)
        self.entries: list[tuple[str, str, float | None, np.ndarray, np.ndarray]] = []  # kind, target, dose, feat, dev
        for lab, y in zip(self.train_labels, self.Y):
            one = self._single(lab)
            if one is None:
                continue
            kind, target, dose = one
            f, known = self._features(kind, target)
            if known:
                self.entries.append((kind, target, dose, f, y - self._mean._predict_one(lab)))

    def _single(self, label: str):
        a = _parse(label, self.context.control)
        if len(a.components) != 1:
            return None
        c = a.components[0]
        if c.kind == "compound":
            return "compound", c.target, float(c.dose) if c.dose is not None else None
        if c.kind in ("ko", "kd", "act"):
            return "gene", c.target, None
        return None

    def _features(self, kind: str, target: str) -> tuple[np.ndarray, bool]:
        kb = self.context.knowledge
        f, known = (kb.compound_features if kind == "compound" else kb.gene_features)([target])
        n = len(known[0])
        return f[0, :-n], bool(known[0].any())

    def _predict_one(self, label: str) -> np.ndarray:
        base = self._mean._predict_one(label)
        one = self._single(label)
        if one is None:
            return base
        kind, target, dose = one
        f, known = self._features(kind, target)
        pool = [e for e in self.entries if e[0] == kind and e[1] != target]
        if not known or not pool:
            return base
        best: dict[str, tuple[float, np.ndarray]] = {}  # per training target: the entry at the nearest dose
        for _, t, d, _, dev in pool:
            gap = 0.0 if dose is None or d is None else abs(np.log10(d + 1e-3) - np.log10(dose + 1e-3))
            if t not in best or gap < best[t][0]:
                best[t] = (gap, dev)
        names = sorted(best)
        feats = {e[1]: e[3] for e in pool}
        F = np.stack([feats[t] for t in names])
        sims = F @ f / (np.linalg.norm(F, axis=1) * (np.linalg.norm(f) or 1.0) + 1e-12)
        w = np.exp((sims - sims.max()) / self.temperature)
        w /= w.sum()
        return base + np.einsum("p,pg->g", w, np.stack([best[t][1] for t in names]))


# ------------------------------------------------------------------------------- noise ceiling
def split_half_deltas(
    X: Any, labels: Sequence[str], control: str, seed: int = 0, *, min_cells: int = 2
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Two independent estimates of every perturbation's delta from disjoint halves of the cells.

    Each perturbation's cells, and the control cells, are shuffled with ``seed`` and split in two
    halves (A gets the extra cell of an odd count); delta_A = mean(perturbed A) - mean(control A),
    likewise for B. Labels with fewer than ``min_cells`` cells are skipped.

    Returns
    -------
    ``(deltas_A, deltas_B)``, ``{label: [G]}`` each (control excluded).
    """
    X = np.asarray(X, dtype=np.float64)
    lab = np.asarray([str(x) for x in labels])
    if X.ndim != 2 or len(lab) != X.shape[0]:
        raise BioworldError(f"X has shape {X.shape} and labels has {len(lab)} entries; expected [cells, G] and one label per cell")
    rng = np.random.default_rng(seed)

    def halves(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.permutation(idx)
        h = (len(idx) + 1) // 2
        return idx[:h], idx[h:]

    ctrl = np.flatnonzero(lab == control)
    if len(ctrl) < 2:
        raise BioworldError(f"found {len(ctrl)} control cells labelled {control!r}; expected at least 2 to split in halves")
    ca, cb = halves(ctrl)
    mu_a, mu_b = X[ca].mean(0), X[cb].mean(0)
    A: dict[str, np.ndarray] = {}
    B: dict[str, np.ndarray] = {}
    for name in sorted(set(lab) - {control}):
        idx = np.flatnonzero(lab == name)
        if len(idx) < min_cells:
            continue
        ia, ib = halves(idx)
        A[name] = X[ia].mean(0) - mu_a
        B[name] = X[ib].mean(0) - mu_b
    return A, B


def split_half_ceiling(
    X: Any,
    labels: Sequence[str],
    control: str,
    seed: int = 0,
    *,
    k: int = 20,
    reference: Any = None,
    restrict: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Noise ceiling: half A's delta scored as a "prediction" of half B's delta (see `split_half_deltas`).

    No model can be expected to predict held-out cells much better than an independent replicate
    of the same perturbation does. ``reference`` (for ``centred_pearson``) defaults to the mean of
    half B's deltas over all labels; discrimination ranks among all labels' half-B deltas.
    ``restrict`` limits the scored labels (the ranking still uses all).

    Returns
    -------
    DataFrame ``perturbation, metric, value`` as :func:`bioworld.eval.metrics.score_deltas`.
    """
    from bioworld.eval.metrics import score_deltas

    A, B = split_half_deltas(X, labels, control, seed)
    if reference is None and B:
        reference = np.mean(list(B.values()), axis=0)
    pred = A if restrict is None else {lab: A[lab] for lab in restrict if lab in A}
    return score_deltas(pred, B, k=k, reference=reference)
