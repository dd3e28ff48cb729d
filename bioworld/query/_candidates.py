"""What the planner ranks, and what a scientist needs to read each row.

- :func:`readout_flags` (the tautology guard): a candidate that acts on the goal's own readout is
  flagged ``readout`` with the reason, so the planner ranks it apart from upstream candidates.
- :func:`gene_candidates`: genes the model can represent beyond the ones it was trained on (the
  knowledge layer's gene table), ranked by knowledge proximity to the goal entity's genes.
- :func:`compound_candidates`: every compound the model's compound knowledge resolves, at one dose.
- :func:`describe_rows`: per row ``seen`` (trained on or not), ``evidence`` (short text) and
  ``drugs`` (known compounds hitting a knocked-out gene).

The guard reads the goal on the model's readout: the goal entity's score is its weights
``score_w[goal]`` on the panel genes, and an entity's genes are the panel genes with non-zero
membership.

- ``silence:E`` of the goal entity itself: flagged (it sets the readout's genes to "off").
- ``silence:F`` of an entity that mostly overlaps the goal entity on the panel: flagged when the
  Jaccard index of the two gene sets, the share of the goal's genes in F, or the share of F's
  genes in the goal reaches ``overlap`` (default 0.5): silencing F pins mostly readout genes.
- ``ko:g`` (and kd / act) of a gene whose own weight is at least ``readout_share`` (default 0.1)
  of the goal readout's total absolute weight: the knockout moves the readout through the gene's
  own transcript. A combination sums the shares of its genetic parts.
- ``silence:F`` of any other entity whose panel genes carry at least ``readout_share`` of the goal
  readout's weight: the do-operation sets those genes to "off" itself.
- a combination is flagged when any of its parts is, or when the readout genes its parts set
  (knocked-out genes and silenced entities' genes, each counted once) reach ``readout_share``.

Compounds are never flagged by these rules (a compound acts on its targets' proteins, not on the
readout's transcripts), nor is a compound a genetic model scores as its targets' knockout
(:class:`TargetCompound`): the knockouts stand in for the protein's loss. Such a compound is
flagged by the own-transcript rule (:func:`own_transcript_flags`) when the model's predicted
readout change comes mostly through its targets' own transcripts (an artefact of the stand-in).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from bioworld.actions import Action, Perturbation

READOUT_FLAG = "readout"
#: Defaults of the guard (see the module docstring).
OVERLAP, READOUT_SHARE = 0.5, 0.1
GENETIC = ("ko", "kd", "act")
#: Genes of the bundled gene sets outside the panel are default candidates only when those sets name at least
#: this share of the panel's genes (a screen in another namespace, e.g. mouse symbols or a simulator's names,
#: shares nothing real with them; :func:`gene_candidates`)
MIN_SHARED_PANEL = 0.1


@dataclass(frozen=True)
class Readout:
    """The goal's readout on the panel: which entity, its gene weights and every entity's gene set."""

    goal_entity: str | None  # None for toward:control (no single readout entity)
    panel: list[str]  # panel gene names (columns of ``weights`` and ``members``)
    weights: np.ndarray | None  # [G] readout weights of the goal entity
    members: dict[str, frozenset[str]]  # entity -> its panel genes (non-zero membership)

    @classmethod
    def of(cls, goal: Any, engine: Any, panel: Sequence[str]) -> "Readout":
        names = list(engine.space.entity_names)
        panel = [str(g) for g in panel]
        memb = np.asarray(engine.membership)
        if memb.shape != (len(names), len(panel)):
            from bioworld.errors import BioworldError

            raise BioworldError(f"membership has shape {memb.shape}; expected ({len(names)}, {len(panel)}) "
                                "(entities x panel genes). Fix: pass the model's own panel genes.")
        members = {e: frozenset(panel[j] for j in np.flatnonzero(memb[i])) for i, e in enumerate(names)}
        if goal.direction == "toward":
            return cls(None, panel, None, members)
        w = engine.module.encoder.score_w[names.index(goal.target)].detach().cpu().numpy().astype(np.float64)
        return cls(goal.target, panel, w, members)

    def gene_share(self) -> dict[str, float]:
        """Each panel gene's share of the goal readout's total absolute weight (genes with weight only)."""
        if self.weights is None:
            return {}
        a = np.abs(self.weights)
        tot = a.sum()
        return {} if tot <= 0 else {g: float(v / tot) for g, v in zip(self.panel, a) if v > 0}


def readout_flags(actions: Sequence[Action], readout: Readout, *, overlap: float = OVERLAP,
                  readout_share: float = READOUT_SHARE) -> tuple[list[str], list[str]]:
    """``flag`` (``"readout"`` or ``""``) and ``reason`` of each action (see the module docstring)."""
    if readout.goal_entity is None:
        return [""] * len(actions), [""] * len(actions)
    goal = readout.goal_entity
    goal_genes = readout.members.get(goal, frozenset())
    share = readout.gene_share()
    why_entity: dict[str, str] = {}
    for ent, genes in readout.members.items():
        if ent == goal:
            why_entity[ent] = f"silences the goal entity {goal} itself (the readout)"
            continue
        inter = len(genes & goal_genes)
        if not inter:
            continue
        jac = inter / len(genes | goal_genes)
        of_goal, of_ent = inter / max(len(goal_genes), 1), inter / max(len(genes), 1)
        if max(jac, of_goal, of_ent) >= overlap:
            why_entity[ent] = (f"silences {ent}, which shares {inter} genes with the goal entity {goal} "
                               f"(Jaccard {jac:.2f}; {of_goal:.0%} of {goal}'s genes, {of_ent:.0%} of {ent}'s)")
    flags, reasons = [], []
    for a in actions:
        why = [why_entity[p.target] for p in a.components if p.kind == "silence" and p.target in why_entity]
        if not why:  # the readout genes the action sets directly: knocked-out genes, a silence's genes
            own = [p for p in a.components if (p.kind in GENETIC and share.get(p.target, 0.0) > 0)
                   or (p.kind == "silence" and readout.members.get(p.target, frozenset()) & share.keys())]
            hit = {p.target for p in own if p.kind in GENETIC} | {
                g for p in own if p.kind == "silence" for g in readout.members[p.target] & share.keys()}
            total = sum(share[g] for g in hit)
            if own and total >= readout_share:
                names = " + ".join(f"{p.kind}:{p.target}" for p in own)
                why.append(f"{names} directly sets{' readout genes' if len(hit) > 1 else ''} "
                           f"{', '.join(sorted(hit)[:6])}{' …' if len(hit) > 6 else ''}, which carry {total:.0%} of "
                           f"the {goal} readout's weight")
        flags.append(READOUT_FLAG if why else "")
        reasons.append("; ".join(why))
    return flags, reasons


# ------------------------------------------------------------------------------ candidates
def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1.0), 0.0)


def gene_candidates(space: Any, readout: Readout, *, trained: Sequence[str], max_genes: int | None) -> list[str]:
    """Genes to knock out: every genetic target of the data, then the genes of the model's gene table
    (genes with knowledge features) closest to the goal entity's genes, up to ``max_genes`` in all
    (``None``: every gene the table describes).

    Closeness is the cosine between a gene's knowledge features (gene sets, network and signed
    network neighbourhoods, knockdown signatures) and the mean features of the goal entity's panel
    genes; for ``toward:control``, the largest cosine to a trained genetic target.
    """
    known = list(space.genetic_targets())
    table = space.genes
    known_set = set(known)
    genes = [g for g in table.genes if g and g not in known_set]  # label check below, in ranked order
    genes = _in_namespace(genes, readout.panel)
    feats = _unit(table.features(genes).astype(np.float64))
    keep = np.linalg.norm(feats, axis=1) > 0
    genes = [g for g, k in zip(genes, keep) if k]
    feats = feats[keep]
    if readout.goal_entity is not None:
        anchor = [g for g in readout.members.get(readout.goal_entity, ()) if table.knows(g)]
    else:
        anchor = sorted({p.target for lab in trained for p in space.parse(lab).components
                         if p.kind in GENETIC and table.knows(p.target)})
    if not anchor or not genes:
        return known if max_genes is None else known[:max(max_genes, len(known))]
    a = _unit(table.features(sorted(anchor)).astype(np.float64))
    prox = feats @ _unit(a.mean(0, keepdims=True))[0] if readout.goal_entity is not None else (feats @ a.T).max(1)
    order = np.argsort(-prox, kind="stable")
    n_extra = len(order) if max_genes is None else max(0, max_genes - len(known))
    extra: list[str] = []
    for i in order:  # the closest genes that can be written as a ko: label (checked only until enough)
        if len(extra) >= n_extra:
            break
        if _knockout_label(space, genes[i]):
            extra.append(genes[i])
    return known + extra


def _in_namespace(genes: list[str], panel: Sequence[str]) -> list[str]:
    """``genes`` as they are when the bundled gene sets (the gene table's other source) name at least
    :data:`MIN_SHARED_PANEL` of the panel's genes; else only the panel's own genes, with a warning: the other
    genes' features come from sets that name none of this screen's genes, so the model's answer for them is
    not grounded in anything it measured."""
    import warnings

    from bioworld.data import DataWarning
    from bioworld.errors import user_stacklevel

    panel = [str(g) for g in panel]
    inside, shared = panel_in_namespace(panel)
    if inside:
        return genes
    own = set(panel)
    kept = [g for g in genes if g in own]
    warnings.warn(f"the bundled gene sets name {shared} of the panel's {len(panel)} genes (fewer than "
                  f"{MIN_SHARED_PANEL:.0%}): the default gene candidates are the data's targets and the panel's "
                  f"genes ({len(kept)} more), not the {len(genes) - len(kept)} other genes of those sets. Fix: pass "
                  "the genes to rank, written as the panel writes them (Python: genes=[...]; CLI: bioworld "
                  "prioritize --genes A,B or bioworld design --candidates FILE)", DataWarning,
                  stacklevel=user_stacklevel())
    return kept


def panel_in_namespace(panel: Sequence[str]) -> tuple[bool, int]:
    """Whether the bundled gene sets (human symbols) name at least :data:`MIN_SHARED_PANEL` of the panel's genes
    (an empty panel counts as inside), and how many they name."""
    bundled = _bundled_genes()
    panel = [str(g) for g in panel]
    shared = sum(g in bundled for g in panel)
    return (not panel or shared >= MIN_SHARED_PANEL * len(panel)), shared


def another_species(panel: Sequence[str]) -> bool:
    """The panel looks like another species' symbols: outside the bundled namespace (:func:`panel_in_namespace`)
    while at least :data:`MIN_SHARED_PANEL` of its genes match a bundled (human) gene when case is ignored
    (``Stat1`` / ``STAT1``). A synthetic panel (a simulator's genes) matches in neither way."""
    panel = [str(g) for g in panel]
    if panel_in_namespace(panel)[0]:
        return False
    upper = {g.upper() for g in _bundled_genes()}
    return sum(g.upper() in upper for g in panel) >= MIN_SHARED_PANEL * len(panel)


#: why a genetic model scores no default compound on a panel of another species' symbols
OUT_OF_NAMESPACE = ("their targets are human gene symbols and this panel's genes match them only when case is "
                    "ignored (another species' symbols): the model's answer would rest on nothing it measured")


_BUNDLED_GENES: list[frozenset[str]] = []


def _bundled_genes() -> frozenset[str]:
    """Every gene named by the bundled gene sets the gene table is built from (read once per process)."""
    if not _BUNDLED_GENES:
        from bioworld.actions._space import FEATURE_SOURCES
        from bioworld.entities import load_bundled

        _BUNDLED_GENES.append(frozenset(g for name in FEATURE_SOURCES for e in load_bundled(name) for g in e.genes))
    return _BUNDLED_GENES[0]


def _knockout_label(space: Any, gene: str) -> bool:
    """``ko:gene`` parses to a knockout of exactly ``gene`` (table names such as ``TP73:DELTA`` or
    ``A+B`` are not gene symbols a label can carry, so they are not candidates)."""
    from bioworld.errors import BioworldError

    try:
        a = space.parse(f"ko:{gene}")
    except BioworldError:
        return False
    return len(a.components) == 1 and a.components[0].kind == "ko" and a.components[0].target == gene


def unlabelled_genes(space: Any) -> int:
    """How many names of the model's gene table cannot be written as a ``ko:`` label (never candidates)."""
    return sum(1 for g in space.genes.genes if not g or not _knockout_label(space, g))


def compound_candidates(space: Any, dose: float) -> list[str]:
    """``NAME@dose`` of every compound the model's compound features resolve (none without compounds),
    one per compound: names that the bundled aliases map to one compound key (``NVP-BEZ235`` and
    ``dactolisib``) are one candidate (:func:`dedupe_compounds`)."""
    comp = getattr(space, "compounds", None)
    if comp is None:
        return []
    names = sorted(set(getattr(comp, "rows", {})) | set(getattr(comp, "smiles", {})) | set(getattr(comp, "seen", ())))
    kept, _ = dedupe_compounds(names, seen=set(getattr(comp, "seen", ())), smiles=set(getattr(comp, "smiles", {})))
    return [space.parse(f"{n}@{dose:g}").label for n in kept]


@dataclass(frozen=True)
class TargetCompound:
    """A compound scored by a model without compound features, as the inhibition of its known targets.

    ``name`` is the row's label (kind ``compound``), ``action`` what the engine runs (the
    knockout, or knockdown, of ``targets``), ``missing`` its known targets the model cannot represent."""

    name: str
    action: Action
    targets: tuple[str, ...]
    missing: tuple[str, ...] = ()
    moa: str = ""
    #: the other compounds whose representable targets are the same (the same action, so the same
    #: prediction): this row stands for them too (:func:`merge_same_action`)
    same_action: tuple["TargetCompound", ...] = ()

    def evidence(self) -> str:
        """``NAME: as the inhibition of its targets A, B (ko:A+ko:B)``, the unrepresented targets, the
        mechanism of action and every other compound the row stands for (:attr:`same_action`)."""
        parts = "+".join(f"{p.kind}:{p.target}" for p in self.action.components)
        text = (f"{self.name}: as the inhibition of its target{'s' if len(self.targets) > 1 else ''} "
                f"{', '.join(self.targets)} ({parts})")
        if self.missing:
            text += (f"; {len(self.missing)} known target{'s' if len(self.missing) > 1 else ''} the model cannot "
                     f"represent: {', '.join(self.missing[:5])}{' …' if len(self.missing) > 5 else ''}")
        text += f" ({self.moa})" if self.moa else ""
        if self.same_action:
            n = len(self.same_action)
            text += (f"; the same action, so the same prediction, for {n} more compound{'s' if n > 1 else ''} with "
                     f"these representable targets: " + ", ".join(o.name + (
                         f" (+{len(o.missing)} target{'s' if len(o.missing) > 1 else ''} the model cannot represent)"
                         if o.missing else "") for o in self.same_action))
        return text

    def names(self) -> tuple[str, ...]:
        """Every compound the row stands for: its own name first, then :attr:`same_action`'s."""
        return (self.name, *(o.name for o in self.same_action))


def merge_same_action(compounds: Sequence[TargetCompound]) -> list[TargetCompound]:
    """One row per distinct action: compounds scored as the loss of the same set of targets get the same
    prediction, so they are one row, named by the compound with the fewest targets the model cannot
    represent (the one the action describes best; ties: the name, case-insensitive), the others in its
    :attr:`~TargetCompound.same_action` (in the same order). Rows keep the order of each action's first
    compound; a compound is never dropped: :meth:`TargetCompound.names` of the rows hold every input."""
    groups: dict[frozenset, list[TargetCompound]] = {}
    for tc in compounds:
        groups.setdefault(frozenset(tc.action.components), []).append(tc)
    out = []
    for group in groups.values():  # (a row that already stands for others is unpacked first)
        flat = sorted((o for t in group for o in (replace(t, same_action=()), *t.same_action)),
                      key=lambda t: (len(t.missing), t.name.casefold(), t.name))
        out.append(replace(flat[0], same_action=tuple(flat[1:])))
    return out


#: Why a compound of the bundled knowledge is not a candidate of a model without compound features.
NO_TARGET, NOT_REPRESENTABLE = "no known target", "no representable target"
TOO_MANY = "more than {} representable targets (a broad inhibitor)"
#: Most targets a compound is scored with (the loss of all of them at once). A compound listed with more
#: hits many proteins (typically a broad kinase inhibitor): the loss of every listed target is not
#: what a usable dose does, and each target costs one more predictor pass per cell. Such compounds are
#: counted as not scored, never dropped silently.
MAX_TARGETS = 8


def inhibition_kind(space: Any, trained: Sequence[str]) -> str:
    """The loss-of-function kind a compound's inhibition is written as: ``kd`` when the model was
    trained on more knockdowns than knockouts (a CRISPRi screen), else ``ko``."""
    kinds = [p.kind for lab in trained for p in space.parse(lab).components if p.kind in ("ko", "kd")]
    return "kd" if kinds.count("kd") > kinds.count("ko") else "ko"


def _representable(space: Any, gene: str, kind: str) -> bool:
    """``kind:gene`` is one perturbation of exactly ``gene`` that the model can predict."""
    from bioworld.errors import BioworldError

    try:
        a = space.parse(f"{kind}:{gene}")
        space.check(a)
    except BioworldError:
        return False
    return len(a.components) == 1 and a.components[0].target == gene


def target_compounds(space: Any, trained: Sequence[str], names: Sequence[str] | None = None, *,
                     max_targets: int = MAX_TARGETS, merge: bool = True
                     ) -> tuple[list[TargetCompound], dict[str, list[str]]]:
    """Compounds of the bundled knowledge (``names``: those names, a ``@dose`` ignored; ``None``: every
    compound) as the inhibition of their known targets that the model can represent, for a model
    without compound features; and the compounds that cannot be scored, by reason (:data:`NO_TARGET`,
    :data:`NOT_REPRESENTABLE`, :data:`TOO_MANY`: more than ``max_targets`` representable targets,
    :data:`MAX_TARGETS`; not in the knowledge: ``"not in the bundled compound knowledge"``).

    One row per distinct action (``merge``, :func:`merge_same_action`: compounds with the same representable
    targets are one row that names them all; ``merge=False``: one row per compound key); targets in the
    table's order; the inhibition is the model's loss-of-function
    kind (:func:`inhibition_kind`), every representable target at once (an action wider than the model's
    ``max_components`` is scored through :func:`encode_candidates`: the module composes the targets'
    losses additively, as it does a pair). No dose: the model knows a target's loss, not a compound's
    dose."""
    ck = _compound_knowledge()
    kind = inhibition_kind(space, trained)
    skipped: dict[str, list[str]] = {}
    if names is None:
        keys = list(ck.keys)
    else:
        keys = []
        for n in names:
            base = str(n).rsplit("@", 1)[0]
            key = ck.resolve(base, strict=False)
            if key is None:
                skipped.setdefault("not in the bundled compound knowledge", []).append(base)
            elif key not in keys:
                keys.append(key)
    out, known = [], {}
    for key in keys:
        name = ck.name(key)
        targets = ck.targets(key)
        ok = [g for g in targets if known.setdefault(g, _representable(space, g, kind))]
        why = (NO_TARGET if not targets else NOT_REPRESENTABLE if not ok
               else TOO_MANY.format(max_targets) if len(ok) > max_targets else "")
        if why:
            skipped.setdefault(why, []).append(name)
            continue
        action = Action(tuple(Perturbation(kind, g) for g in ok))
        out.append(TargetCompound(name, action, tuple(ok), tuple(g for g in targets if g not in ok), ck.moa(key)))
    return (merge_same_action(out) if merge else out), skipped


def as_target_losses(space: Any, trained: Sequence[str], actions: Sequence[Action],
                     targets: dict[str, Sequence[str]] | None = None) -> tuple[list[Action], dict[int, str]]:
    """``actions`` for a model without compound features (one trained on gene perturbations): each compound
    component becomes the inhibition of its targets the model can represent, the rule the planner ranks
    compounds by (:func:`target_compounds`, at most :data:`MAX_TARGETS` targets), so a drug and the loss of its
    targets get one answer in predict, counterfactual and prioritize. A compound's targets are ``targets[name]``
    when given (query time), else the bundled compound knowledge's. Returns the actions (others unchanged) and,
    per rewritten action (its position), what it was answered as.

    Raises
    ------
    UnknownPerturbationError
        A compound without known targets, or whose targets the model cannot represent or are too many.
    """
    kind = inhibition_kind(space, trained)
    given = {str(k).lower(): tuple(str(g) for g in v) for k, v in (targets or {}).items()}  # names: any case
    out: list[Action] = []
    notes: dict[int, str] = {}
    for i, a in enumerate(actions):
        if not a.compounds:
            out.append(a)
            continue
        parts = [p for p in a.components if p.kind != "compound"]
        texts = []
        for p in (q for q in a.components if q.kind == "compound"):
            tc = _target_loss(space, trained, kind, p.target, given)
            parts += [q for q in tc.action.components if q not in parts]
            texts.append(tc.evidence())
        out.append(Action(tuple(parts)))
        notes[i] = ("; ".join(texts) + ". The model learned gene perturbations, not compounds: the answer is "
                          "the loss of the targets, whatever the dose")
    return out, notes


def _target_loss(space: Any, trained: Sequence[str], kind: str, name: str, given: dict[str, tuple[str, ...]]
                 ) -> TargetCompound:
    """:func:`target_compounds`' row of one compound (its targets ``given`` at query time, else the bundled
    knowledge's), or the reason it has none."""
    from bioworld.errors import UnknownPerturbationError

    fix = (f"Fix: give its targets (compound_targets={{{name!r}: [genes]}} (CLI: --compound-targets TABLE), "
           "a table with columns compound, target_gene), or train on data with compounds.")
    if name.lower() in given:
        listed = given[name.lower()]
        ok = [g for g in listed if _representable(space, g, kind)]
        why = (NO_TARGET if not listed else NOT_REPRESENTABLE if not ok
               else TOO_MANY.format(MAX_TARGETS) if len(ok) > MAX_TARGETS else "")
        if not why:
            return TargetCompound(name, Action(tuple(Perturbation(kind, g) for g in ok)), tuple(ok),
                                  tuple(g for g in listed if g not in ok))
        if why == NOT_REPRESENTABLE:  # the user's own targets: say which the model does not know
            why += (f": the given target(s) {list(listed)[:5]} are in no gene set, STRING, OmniPath or atlas knockdown "
                    "the model knows and were not trained on (check the symbols: HGNC, case-sensitive)")
    else:
        rows, skipped = target_compounds(space, trained, [name], merge=False)
        if rows:
            return rows[0]
        why = next(iter(skipped))
        if why.startswith("not in"):
            from bioworld.errors import close_matches

            ck = _compound_knowledge()
            why += f" (close matches: {close_matches(name, sorted({ck.name(k) for k in ck.keys})) or 'none'})"
    raise UnknownPerturbationError(
        f"compound {name!r}: {why}, so this model (trained on gene perturbations, no compound features) cannot "
        f"answer it as the loss of its targets; expected a compound with 1-{MAX_TARGETS} known targets the model "
        f"represents. {fix}")


def encode_candidates(engine: Any, actions: Sequence[Action], labels: Sequence[str]) -> Any:
    """``engine.candidates`` of ``actions`` named ``labels``, the table as wide as the widest action (a
    compound as the loss of more targets than the model's ``max_components``)."""
    width = max((len(a.components) for a in actions), default=0)
    return engine.candidates(list(actions), labels=list(labels),
                             width=width if width > engine.space.max_components else None)


def not_scored_text(skipped: dict[str, list[str]]) -> str:
    """``N compounds not scored: 30 no known target (e.g. …); 115 more representable targets than the
    model combines in one action (2) (e.g. …)`` ("" when none)."""
    n = sum(len(v) for v in skipped.values())
    if not n:
        return ""
    return f"{n} compound{'s' if n > 1 else ''} not scored: " + "; ".join(
        f"{len(v)} {why} (e.g. {', '.join(v[:3])})" for why, v in skipped.items())


def same_action_text(compounds: Sequence[TargetCompound]) -> str:
    """``N compounds are scored as the same action as another compound and share its row: A (with B, C);
    D (with E)`` for the rows that stand for several compounds (:func:`merge_same_action`; "" when none).
    Every name is listed: this is where a merged compound is found when its row is not shown."""
    rows = [tc for tc in compounds if tc.same_action]
    n = sum(len(tc.same_action) for tc in rows)
    if not n:
        return ""
    return (f"{n} compound{'s are' if n > 1 else ' is'} scored as the same action (the same representable targets) "
            f"as another compound and share{'' if n > 1 else 's'} its row (column same_action): "
            + "; ".join(f"{tc.name} (with {', '.join(o.name for o in tc.same_action)})" for tc in rows))


def dedupe_compounds(names: Sequence[str], *, seen: set[str] = frozenset(), smiles: set[str] = frozenset(),
                     key: Any = None) -> tuple[list[str], dict[str, list[str]]]:
    """One name per compound key: ``(kept names, {kept: [merged aliases]})``.

    ``key(name)`` gives a compound key (default: the bundled alias table; a name it does not know is
    its own key). The name kept is the one the model was trained on, else one with a structure, else
    the key itself, else the first alphabetically."""
    if key is None:
        ck = _compound_knowledge()

        def key(n: str) -> str:
            return ck.resolve(n, strict=False) or n
    groups: dict[str, list[str]] = {}
    for n in sorted(names):
        groups.setdefault(key(n), []).append(n)
    kept, merged = [], {}
    for k, group in groups.items():
        best = min(group, key=lambda n: (n not in seen, n not in smiles, n != k, n))
        kept.append(best)
        if len(group) > 1:
            merged[best] = [n for n in group if n != best]
    return sorted(kept), merged


# ------------------------------------------------------------------------------- evidence
def _compound_knowledge() -> Any:
    from bioworld.knowledge import CompoundKnowledge

    return CompoundKnowledge.bundled()


def describe_rows(actions: Sequence[Action], engine: Any, readout: Readout, *, n_near: int = 3
                  ) -> tuple[list[bool], list[str], list[str]]:
    """``seen``, ``evidence`` and ``drugs`` of each action.

    ``seen``: the action's label is one the model was trained on. ``evidence``: a trained label is
    "measured"; an unseen gene its ``n_near`` nearest measured genetic perturbations by knowledge
    features (cosine); a compound its known targets; a silence the number of panel genes set off
    and how many are readout genes; a pair joins its parts. ``drugs``: compounds of the bundled
    knowledge that hit a knocked-out gene ("" when none).
    """
    space = engine.space
    trained = engine.trained
    ck = _compound_knowledge()
    measured = sorted({p.target for lab in trained for p in space.parse(lab).components if p.kind in GENETIC
                       and space.genes.knows(p.target)})
    mfeat = _unit(space.genes.features(measured).astype(np.float64)) if measured else np.zeros((0, 1))
    trained_targets = {q.target for lab in trained for q in space.parse(lab).components}
    goal_genes = readout.members.get(readout.goal_entity or "", frozenset())
    cache: dict[str, str] = {}

    def part(p: Any) -> str:
        key = f"{p.kind}:{p.target}@{p.dose}"
        if key in cache:
            return cache[key]
        if p.kind == "compound":
            tg = ck.targets(p.target)
            moa = ck.moa(p.target)
            text = (f"{p.target}: targets {', '.join(tg[:5])}{' …' if len(tg) > 5 else ''}" if tg
                    else f"{p.target}: no known targets") + (f" ({moa})" if moa else "")
        elif p.kind == "silence":
            genes = readout.members.get(p.target, frozenset())
            text = f"{p.target}: mechanism, {len(genes)} panel genes set off"
            if readout.goal_entity is not None:
                text += f", {len(genes & goal_genes)} of them in the readout"
        elif p.target in trained_targets:
            text = f"{p.target}: measured"
        elif len(measured) and space.genes.knows(p.target):
            f = _unit(space.genes.features([p.target]).astype(np.float64))[0]
            sim = mfeat @ f
            near = np.argsort(-sim, kind="stable")[:n_near]
            text = f"{p.target}: nearest measured " + ", ".join(f"{measured[i]} ({sim[i]:.2f})" for i in near)
        else:
            text = f"{p.target}: no measured perturbation to compare"
        cache[key] = text
        return text

    seen, evidence, drugs = [], [], []
    for a in actions:
        seen.append(a.label in trained)
        if a.label in trained:  # measured; a silence still says what it sets off
            evidence.append("; ".join(["measured"] + [part(p) for p in a.components if p.kind == "silence"]))
        else:
            evidence.append("; ".join(part(p) for p in a.components))
        hits = sorted({c for p in a.components if p.kind in GENETIC for c in ck.compounds_targeting(p.target)})
        drugs.append(f"{len(hits)}: {', '.join(hits[:3])}{' …' if len(hits) > 3 else ''}" if hits else "")
    return seen, evidence, drugs


def kind_of(a: Action) -> str:
    """``gene``, ``compound``, ``entity`` (a silence: a mechanism) or ``pair`` (any combination)."""
    if len(a.components) > 1:
        return "pair"
    k = a.components[0].kind
    return "compound" if k == "compound" else "entity" if k == "silence" else "gene"


def default_candidates(engine: Any, goal: str, *, panel: Sequence[str], genes: Sequence[str] | None,
                       compounds: Sequence[str] | None, dose: float, max_genes: int | None
                       ) -> tuple[list[str], list[str]]:
    """The gene and compound candidates of a prioritisation (given ones kept, defaults filled in)."""
    from bioworld.errors import BioworldError
    from bioworld.query._planner import Goal

    if max_genes is not None and (isinstance(max_genes, bool) or int(max_genes) < 0):
        raise BioworldError(f"max_genes {max_genes!r}; expected a number >= 0 or None (every gene the model knows)")
    try:
        dose = float(dose)
    except (TypeError, ValueError):
        raise BioworldError(f"dose {dose!r} is not a number; expected a dose >= 0 in the data's unit") from None
    if not np.isfinite(dose) or dose < 0:
        raise BioworldError(f"dose {dose!r}; expected a finite dose >= 0 in the data's unit")
    space = engine.space
    if genes is None:
        g = Goal.parse(goal, entity_names=list(space.entity_names))
        gene_list = gene_candidates(space, Readout.of(g, engine, panel), trained=sorted(engine.trained),
                                    max_genes=max_genes)
    else:
        gene_list = list(genes)
    if compounds is None:
        compound_list = compound_candidates(space, dose)
    else:
        compound_list = [c if "@" in str(c) else f"{c}@{dose:g}" for c in compounds]
    return gene_list, compound_list


def own_transcript_flags(engine: Any, cache: Any, labels: Sequence[str], readout: Readout,
                         weights: np.ndarray | None, *, own_share: float = 0.5,
                         shares: dict[str, float] | None = None, parse: Any = None) -> dict[str, str]:
    """Reasons for candidates whose predicted goal change comes mostly from their own transcripts.

    For each label with knocked-out genes in the goal readout, the predicted change of the readout
    on ``cache`` (the screen's prototype cells, ``weights``) is split into the part carried by those
    genes' own transcripts and the rest; a share >= ``own_share`` flags it: the model lowers the
    readout by lowering the knocked-out gene itself, not through anything upstream. ``shares`` (a
    dict, filled in place): that share of every such label. ``parse``: label -> action (default
    ``engine.space.parse``; the planner's rows include compounds written as their targets' loss).
    """
    share = readout.gene_share()
    if not share or readout.weights is None:
        return {}
    pos = {g: i for i, g in enumerate(readout.panel)}
    todo = []
    parse = parse or engine.space.parse
    for lab in labels:
        a = parse(lab)
        own = sorted({p.target for p in a.components if p.kind in GENETIC and p.target in share})
        if own:
            todo.append((lab, a, own))
    if not todo:
        return {}
    out: dict[str, str] = {}
    w = readout.weights.astype(np.float64)
    base = cache.x_base.detach().cpu().numpy().astype(np.float64)
    wts = np.full(len(base), 1.0 / len(base)) if weights is None else np.asarray(weights, np.float64)
    step = 256
    for s in range(0, len(todo), step):
        part = todo[s:s + step]
        cands = encode_candidates(engine, [a for _, a, _ in part], [lab for lab, _, _ in part])
        x_pred = engine.run(cache, cands).x_pred  # [C, n, G]
        contrib = (x_pred.astype(np.float64) - base[None]) * w  # per-gene change of the readout
        total = contrib.sum(-1) @ wts
        for k, (lab, _, own) in enumerate(part):
            own_c = contrib[k][:, [pos[g] for g in own]].sum(-1) @ wts
            if shares is not None and total[k] != 0:
                shares[lab] = float(own_c / total[k])
            if total[k] != 0 and own_c / total[k] >= own_share:
                out[lab] = (f"{', '.join(own)}: {own_c / total[k]:.0%} of the predicted change of the "
                            f"{readout.goal_entity} readout is the knocked-out gene's own transcript")
    return out
