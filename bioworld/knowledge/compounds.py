"""Compounds by name: resolve any seen name to a compound key, and the key to its target genes.

The compound key rules follow the atlas build (bundled ``compounds/compound_aliases.tsv``): drop a
bracketed synonym that follows a space, drop salt / hydrate / counter-ion words, lower-case and keep
only ``a-z0-9``. Any name listed in the alias table (atlas sources, the L1000 plate, the Drug
Repurposing Hub, LINCS) resolves to its key; names that are not listed resolve when their
normalised form is a known key or a known name's normalised form.

Licences: the target table is Drug Repurposing Hub (non-commercial) + LINCS/CLUE + a DrugBank-derived
union (CC BY-NC) where nothing curated exists; see :mod:`bioworld.knowledge._sources`.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bioworld.errors import DataValidationError, UnknownPerturbationError

__all__ = ["CompoundKnowledge", "normalize_compound_name"]

_SALT_WORDS = {
    "maleate", "hydrochloride", "dihydrochloride", "trihydrochloride", "hcl", "2hcl", "3hcl", "sodium",
    "disodium", "potassium", "calcium", "magnesium", "hydrate", "monohydrate", "dihydrate", "trihydrate",
    "hemihydrate", "sesquihydrate", "mesylate", "dimesylate", "methanesulfonate", "citrate", "sulfate",
    "bisulfate", "hemisulfate", "tosylate", "ditosylate", "phosphate", "diphosphate", "tartrate",
    "bitartrate", "fumarate", "hemifumarate", "acetate", "besylate", "succinate", "bromide",
    "hydrobromide", "chloride", "lactate", "malate", "oxalate", "salt", "trifluoroacetate", "tfa",
    "free", "base", "anhydrous", "nitrate", "gluconate", "palmitate", "benzoate", "napadisylate",
}
_FIXED = {"g(+)-jq1": "jq1", "dapagliflozin 2s-1": "dapagliflozin"}


def normalize_compound_name(name: str) -> str:
    """The compound key of ``name`` by the atlas rules (no table lookup): e.g.
    ``'Trametinib (GSK1120212)'`` -> ``'trametinib'``, ``'PD-0325901'`` -> ``'pd0325901'``,
    ``'Tofacitinib citrate'`` -> ``'tofacitinib'``."""
    text = str(name).strip()
    fixed = _FIXED.get(text.lower())
    if fixed:
        return fixed
    text = re.sub(r"\s+\([^()]*\)\s*$", "", text)  # bracketed synonym after a space
    words = [w for w in re.split(r"\s+", text) if w.lower().strip(",;") not in _SALT_WORDS]
    text = " ".join(words) if words else text
    return re.sub(r"[^a-z0-9]", "", text.lower())


class CompoundKnowledge:
    """Compound names -> keys -> target genes (and mechanism of action).

    Parameters
    ----------
    targets
        Rows ``(compound key, target gene, moa, source)``; default: the bundled table.
    aliases
        ``{name: key}``; default: the bundled alias table.

    Use :meth:`bundled` for the shipped tables, :meth:`with_targets` to add a user's table
    (``compound, target_gene`` columns) and :meth:`shuffled` for the ablation that permutes the
    compound -> target links.
    """

    def __init__(self, targets: Iterable[tuple[str, str, str, str]], aliases: Mapping[str, str]) -> None:
        self._targets: dict[str, list[str]] = {}
        self._moa: dict[str, str] = {}
        self._sources: dict[str, set[str]] = {}
        keys: set[str] = set()
        for key, gene, moa, source in targets:
            keys.add(key)
            self._sources.setdefault(key, set()).add(source)
            if moa and key not in self._moa:
                self._moa[key] = moa
            if gene and gene not in self._targets.setdefault(key, []):
                self._targets[key].append(gene)
        self._alias = {str(n).strip().lower(): k for n, k in aliases.items()}
        self._names: dict[str, list[str]] = {}  # key -> its names as listed (first seen first)
        for n, k in aliases.items():
            self._names.setdefault(k, []).append(str(n).strip())
        self._norm_alias = {normalize_compound_name(n): k for n, k in aliases.items()}
        self.keys = sorted(keys | set(self._alias.values()))
        self._by_gene: dict[str, list[str]] = {}
        for k in sorted(self._targets):
            for g in self._targets[k]:
                self._by_gene.setdefault(g, []).append(k)

    # ---------------------------------------------------------------------------- construction
    @classmethod
    def bundled(cls) -> "CompoundKnowledge":
        """The shipped compound -> target and alias tables (read once per process)."""
        global _BUNDLED
        if _BUNDLED is None:
            from bioworld.data import bundled_path

            rows = []
            with open(bundled_path("compounds/compound_targets.tsv"), newline="") as fh:
                for r in csv.DictReader(fh, delimiter="\t"):
                    rows.append((r["compound"], r["target_gene"].strip(), r["moa"], r["source"]))
            aliases: dict[str, str] = {}
            with open(bundled_path("compounds/compound_aliases.tsv"), newline="") as fh:
                for r in csv.DictReader(fh, delimiter="\t"):
                    aliases.setdefault(r["name"], r["compound"])
            for key, *_ in rows:
                aliases.setdefault(key, key)
            _BUNDLED = cls(rows, aliases)
        return _BUNDLED

    def with_targets(self, table: str | Path | Mapping[str, Sequence[str]]) -> "CompoundKnowledge":
        """A copy that also knows the compounds of ``table``: a mapping ``name -> [genes]`` or a
        TSV/CSV file with columns ``compound`` and ``target_gene`` (one row per pair). Names are
        normalised to keys; a listed compound's targets replace the bundled ones."""
        mapping = target_mapping(table)
        rows = [(k, g, self._moa.get(k, ""), next(iter(self._sources.get(k, {"bundled"}))))
                for k, genes in self._targets.items() if k not in {self.resolve_key(n) for n in mapping}
                for g in genes]
        aliases = {n: k for n, k in self._alias.items()}
        for name, genes in mapping.items():
            key = self.resolve(name, strict=False) or normalize_compound_name(name)
            aliases[name] = key
            if not genes:
                rows.append((key, "", "", "user"))
            rows += [(key, g, self._moa.get(key, ""), "user") for g in genes]
        return CompoundKnowledge(rows, aliases)

    def shuffled(self, seed: int) -> "CompoundKnowledge":
        """Ablation: the same compounds and target-set sizes, with target sets permuted among compounds;
        each target set keeps its mechanism-of-action label (the pair moves together, so no compound
        keeps its own mechanism through the label)."""
        rng = np.random.default_rng(seed)
        keys = [k for k in sorted(self._targets) if self._targets[k]]
        perm = rng.permutation(len(keys))
        rows = [(k, g, self._moa.get(keys[j], ""), "shuffled") for k, j in zip(keys, perm) for g in self._targets[keys[j]]]
        return CompoundKnowledge(rows, {n: k for n, k in self._alias.items()})

    # ------------------------------------------------------------------------------ queries
    def resolve_key(self, name: str) -> str:
        return self.resolve(name, strict=False) or normalize_compound_name(name)

    def resolve(self, name: str, *, strict: bool = True) -> str | None:
        """The compound key of ``name`` (any seen spelling, or a key); ``None`` or an error if unknown."""
        text = str(name).strip()
        key = self._alias.get(text.lower())
        if key is None:
            norm = normalize_compound_name(text)
            key = norm if norm in self._targets or norm in self._alias.values() else self._norm_alias.get(norm)
        if key is None and strict:
            from bioworld.errors import close_matches

            near = close_matches(text, sorted(self._alias))[:5]
            raise UnknownPerturbationError(
                f"compound {text!r} is not in the bundled compound knowledge ({len(self.keys)} compounds); "
                f"close matches: {near or 'none'}. Fix: use a listed name, or give its targets "
                "(--compound-targets TABLE / compound_targets=) or its structure (--compound NAME=SMILES)."
            )
        return key

    def targets(self, name: str) -> list[str]:
        """Target genes of a compound (name or key); empty when none are known."""
        key = self.resolve(name, strict=False)
        return list(self._targets.get(key, [])) if key else []

    def name(self, key: str) -> str:
        """A readable name of compound ``key``: its first listed name whose normalised form is the key,
        without a trailing bracketed synonym or salt words (``Abexinostat (PCI-24781)`` -> ``Abexinostat``);
        else the first listed name; else the key. Never a name with ``+``, ``@``, ``:`` or ``"`` (those
        cannot be a row label): the key instead."""
        names = [n for n in self._names.get(key, []) if n and not any(c in n for c in '+@:"')]
        for n in names:
            short = re.sub(r"\s+\([^()]*\)\s*$", "", n)
            short = " ".join(w for w in short.split() if w.lower().strip(",;") not in _SALT_WORDS) or short
            if normalize_compound_name(short) == key:
                return short
        return (names or [key])[0]

    def moa(self, name: str) -> str:
        key = self.resolve(name, strict=False)
        return self._moa.get(key, "") if key else ""

    def compounds_targeting(self, gene: str) -> list[str]:
        """Compound keys with ``gene`` among their targets (druggability)."""
        return list(self._by_gene.get(gene, ()))

    def __contains__(self, name: str) -> bool:
        return self.resolve(name, strict=False) is not None

    def __repr__(self) -> str:
        n_t = sum(1 for v in self._targets.values() if v)
        return f"CompoundKnowledge({len(self.keys)} compounds, {n_t} with targets)"


_BUNDLED: CompoundKnowledge | None = None


def target_mapping(table: Any) -> dict[str, list[str]]:
    """Compound targets a user gives, as ``name -> [genes]``: a mapping (a gene given as one string is one gene, not
    its letters) or a TSV/CSV path with columns ``compound, target_gene``; anything else is refused."""
    if isinstance(table, Mapping):
        out = {}
        for name, genes in table.items():
            if isinstance(genes, str):
                genes = [genes]
            elif not hasattr(genes, "__iter__") or isinstance(genes, Mapping):
                raise DataValidationError(
                    f"compound_targets[{name!r}] is {genes!r} ({type(genes).__name__}); expected a list of target gene "
                    f"symbols. Fix: compound_targets={{{str(name)!r}: ['GENE1', 'GENE2']}}.")
            out[str(name)] = [str(g) for g in genes]
        return out
    if isinstance(table, (str, os.PathLike)):
        return _read_target_table(table)
    raise DataValidationError(
        f"compound_targets is {table!r} ({type(table).__name__}); expected a dict name -> [target genes] or the path "
        "of a TSV/CSV file with columns 'compound' and 'target_gene'. Fix: pass one of those.")


def _read_target_table(path: str | Path) -> dict[str, list[str]]:
    p = Path(path)
    if not p.is_file():
        raise DataValidationError(
            f"compound target table {str(p)!r} not found; expected a TSV/CSV file with columns "
            "'compound' and 'target_gene'. Fix: check the path."
        )
    sep = "," if p.suffix.lower() == ".csv" else "\t"
    with open(p, newline="") as fh:
        reader = csv.DictReader(fh, delimiter=sep)
        cols = set(reader.fieldnames or [])
        if not {"compound", "target_gene"} <= cols:
            raise DataValidationError(
                f"compound target table {str(p)!r} has columns {sorted(cols)}; expected 'compound' and "
                "'target_gene' (one row per compound-target pair). Fix: rename the columns."
            )
        out: dict[str, list[str]] = {}
        for i, r in enumerate(reader, start=2):
            name = (r["compound"] or "").strip()
            if not name:
                raise DataValidationError(f"{p}:{i}: empty compound name; expected a name in every row.")
            gene = (r["target_gene"] or "").strip()
            out.setdefault(name, [])
            if gene and gene not in out[name]:
                out[name].append(gene)
    if not out:
        raise DataValidationError(f"compound target table {str(p)!r} has no rows; expected at least one compound.")
    return out
