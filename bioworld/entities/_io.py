"""Readers for gene-set files: GMT, long weight tables (PROGENy) and TF regulons (DoRothEA).

Every reader raises `EntityError` saying what it found, what it expected and how to fix it.
"""

from __future__ import annotations

import gzip
import re
from os import PathLike
from pathlib import Path
from typing import IO, Literal

import numpy as np
import pandas as pd

from bioworld.entities._entity import REGULON_PREFIX, Entity, EntitySet
from bioworld.errors import EntityError

# An ontology id such as GO:0000002 or HP:0001250 (used by name_column="auto").
_CURIE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*:\d+$")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".gmt", ".tsv", ".txt", ".csv"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or path.name


def _check_file(path: str | PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise EntityError(
            f"Found no file at '{p}'; expected a {what}. "
            "Fix: check the path, or use bioworld.entities.load_bundled(...) for the bundled sets."
        )
    if p.is_dir():
        raise EntityError(f"Found a directory at '{p}'; expected a {what} file. Fix: pass the file itself.")
    if p.stat().st_size == 0:
        raise EntityError(f"Found an empty file at '{p}'; expected a {what}. Fix: re-download or regenerate it.")
    return p


def _open_text(p: Path) -> IO[str]:
    """The file's text (gzip-aware, UTF-8); undecodable or corrupt files raise EntityError."""
    import io

    try:
        if p.name.lower().endswith(".gz"):
            with gzip.open(p, "rt", encoding="utf-8") as fh:
                return io.StringIO(fh.read())
        with open(p, encoding="utf-8") as fh:
            return io.StringIO(fh.read())
    except UnicodeDecodeError as e:
        raise EntityError(
            f"Found bytes that are not UTF-8 text in {str(p)!r} (position {e.start}); expected a text "
            "gene-set file. Fix: check that the file is a GMT/TSV text file (not binary or another encoding)."
        ) from None
    except (gzip.BadGzipFile, EOFError, OSError) as e:
        raise EntityError(
            f"Found an unreadable file {str(p)!r} ({e}); expected {'gzip-compressed ' if p.name.lower().endswith('.gz') else ''}"
            "text. Fix: re-download or re-compress the file."
        ) from None


def _duplicates_error(path: Path, dups: dict[str, list[int]], what: str) -> EntityError:
    examples = "; ".join(f"{n!r} on lines {lines}" for n, lines in list(dups.items())[:3])
    return EntityError(
        f"Found {len(dups)} duplicated {what} in '{path}' ({examples}); expected each name once. "
        "Fix: merge or rename the duplicated entries (for GO-style files try name_column='both')."
    )


# ---------------------------------------------------------------------------- GMT
def read_gmt(
    path: str | PathLike,
    *,
    name_column: Literal["auto", "first", "second", "both"] = "auto",
    source: str | None = None,
) -> EntitySet:
    """Read a GMT file; see `EntitySet.from_gmt`."""
    if name_column not in ("auto", "first", "second", "both"):
        raise EntityError(
            f"Found name_column={name_column!r}; expected 'auto', 'first', 'second' or 'both'. "
            "Fix: pick one of those."
        )
    p = _check_file(path, "GMT file (name<TAB>description<TAB>gene1<TAB>gene2...)")
    records: list[tuple[int, str, str, list[str]]] = []
    with _open_text(p) as fh:
        for line_no, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) < 3:
                hint = ""
                if " " in line:
                    hint = " The line contains spaces but too few tabs: GMT fields must be tab-separated."
                raise EntityError(
                    f"Found {len(fields)} tab-separated field(s) on line {line_no} of '{p}' "
                    f"({line[:60]!r}); expected at least 3 (name, description, genes...).{hint} "
                    "Fix: correct or remove that line."
                )
            genes = list(dict.fromkeys(g.strip() for g in fields[2:] if g.strip()))
            if not fields[0].strip():
                raise EntityError(
                    f"Found an empty set name on line {line_no} of '{p}'; expected a name in column 1. "
                    "Fix: name the set or remove the line."
                )
            if not genes:
                raise EntityError(
                    f"Found no genes on line {line_no} of '{p}' (set {fields[0]!r}); expected at least one "
                    "gene after the description column. Fix: remove the empty set."
                )
            records.append((line_no, fields[0].strip(), fields[1].strip(), genes))
    if not records:
        raise EntityError(
            f"Found no gene sets in '{p}' (only blank or comment lines); expected GMT lines. "
            "Fix: check that this is the right file."
        )
    if name_column == "auto":
        name_column = "both" if all(_CURIE.match(r[1]) for r in records) else "first"

    def make_name(first: str, second: str) -> str:
        if name_column == "first":
            return first
        if name_column == "second":
            return second
        return f"{first} {second}".strip()

    names = [make_name(r[1], r[2]) for r in records]
    lines_of: dict[str, list[int]] = {}
    for (line_no, *_), n in zip(records, names):
        lines_of.setdefault(n, []).append(line_no)
    dups = {n: ln for n, ln in lines_of.items() if len(ln) > 1}
    if dups:
        raise _duplicates_error(p, dups, "set names")
    src = source if source is not None else _stem(p)
    return EntitySet(Entity(n, tuple(r[3]), (1.0,) * len(r[3]), src) for n, r in zip(names, records))


# ---------------------------------------------------------------------------- tables
def _read_table(p: Path, what: str) -> pd.DataFrame:
    lower = p.name.lower().removesuffix(".gz")
    sep = "," if lower.endswith(".csv") else "\t"
    try:
        df = pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise EntityError(
            f"Found an empty file at '{p}'; expected a {what}. Fix: re-download or regenerate it."
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise EntityError(
            f"Could not parse '{p}' as a {'comma' if sep == ',' else 'tab'}-separated table ({err}); "
            f"expected a {what}. Fix: check the delimiter and that the file is not truncated."
        ) from None
    if df.empty:
        raise EntityError(
            f"Found a header but no rows in '{p}' (columns {list(df.columns)}); expected a {what}. "
            "Fix: check that this is the right file."
        )
    return df


def _require_columns(df: pd.DataFrame, p: Path, required: list[str], what: str, fix: str = "rename the columns") -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise EntityError(
            f"Found columns {list(df.columns)} in '{p}'; expected columns {required} ({what}), "
            f"missing {missing}. Fix: {fix}."
        )
    for c in required:
        empty = df[c].isna()
        if empty.any():
            rows = (np.flatnonzero(empty.to_numpy())[:5] + 2).tolist()
            raise EntityError(
                f"Found empty values in column {c!r} of '{p}' (lines {rows}); expected a value on every row. "
                "Fix: fill in or remove those rows."
            )


def _numeric(df: pd.DataFrame, col: str, p: Path) -> np.ndarray:
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        idx = np.flatnonzero(bad)[:5]
        examples = ", ".join(f"line {i + 2}: {df[col].iloc[i]!r}" for i in idx)
        raise EntityError(
            f"Found {int(bad.sum())} non-numeric or non-finite value(s) in column {col!r} of '{p}' "
            f"({examples}); expected finite numbers. Fix: correct or remove those rows."
        )
    return values


def read_weight_table(
    path: str | PathLike,
    *,
    top_n: int | None = None,
    gene_col: str = "gene",
    set_col: str = "pathway",
    weight_col: str = "weight",
    source: str | None = None,
) -> EntitySet:
    """Read a long gene x set weight table; see `EntitySet.from_weight_table`."""
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 1):
        raise EntityError(f"Found top_n={top_n!r}; expected a positive integer or None. Fix: e.g. top_n=100.")
    what = f"weight table with columns {gene_col!r}, {set_col!r}, {weight_col!r}"
    p = _check_file(path, what)
    df = _read_table(p, what)
    _require_columns(df, p, [gene_col, set_col, weight_col], what,
                     fix=f"rename the columns to {gene_col!r}, {set_col!r}, {weight_col!r} (genes listed without weights: "
                         "add a weight column of 1s, or write the sets as a GMT file); EntitySet.from_weight_table "
                         "also reads other column names")
    df = pd.DataFrame(
        {
            "gene": df[gene_col].str.strip(),
            "set": df[set_col].str.strip(),
            "weight": _numeric(df, weight_col, p),
        }
    )
    dup = df.duplicated(["set", "gene"], keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        lines = (np.flatnonzero(dup.to_numpy())[:4] + 2).tolist()
        raise EntityError(
            f"Found gene {first['gene']!r} listed more than once in set {first['set']!r} of '{p}' "
            f"(lines {lines}; {int(dup.sum())} such rows); expected one row per gene and set. "
            "Fix: keep one row per (gene, set) pair."
        )
    if top_n is not None:
        # rank within each set by |weight| (stable: ties keep file order); keep file order after
        by_size = df.assign(key=-df["weight"].abs()).sort_values("key", kind="stable")
        rank = by_size.groupby("set", sort=False).cumcount().reindex(df.index)
        df = df[rank < top_n]
    src = source if source is not None else _stem(p)
    entities = [
        Entity(name, tuple(g["gene"]), tuple(g["weight"]), src) for name, g in df.groupby("set", sort=False)
    ]
    return EntitySet(entities)


def read_regulons(
    path: str | PathLike,
    *,
    confidence: str = "ABC",
    min_targets: int = 5,
    source: str = "dorothea",
) -> EntitySet:
    """Read DoRothEA-style regulons; see `EntitySet.from_regulons`."""
    levels = set(str(confidence).upper())
    if not levels or not levels <= set("ABCDE"):
        raise EntityError(
            f"Found confidence={confidence!r}; expected letters from 'ABCDE' (e.g. 'ABC'). "
            "Fix: pass e.g. confidence='AB'."
        )
    what = "regulon table with columns 'tf', 'confidence', 'target', 'mor'"
    p = _check_file(path, what)
    df = _read_table(p, what)
    _require_columns(df, p, ["tf", "confidence", "target", "mor"], what)
    mor = _numeric(df, "mor", p)
    df = pd.DataFrame(
        {
            "tf": df["tf"].str.strip(),
            "conf": df["confidence"].str.strip().str.upper(),
            "target": df["target"].str.strip(),
            "mor": mor,
        }
    )
    df = df[df["conf"].isin(levels)]
    dup = df.duplicated(["tf", "target"], keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        raise EntityError(
            f"Found target {first['target']!r} listed more than once for TF {first['tf']!r} in '{p}' "
            f"({int(dup.sum())} such rows at confidence {''.join(sorted(levels))}); expected one row per "
            "(tf, target). Fix: keep one row per pair."
        )
    entities = []
    n_small = 0
    for tf, g in df.groupby("tf", sort=True):
        if len(g) < min_targets:
            n_small += 1
            continue
        entities.append(Entity(f"{REGULON_PREFIX}{tf}", tuple(g["target"]), tuple(g["mor"]), source))
    if not entities:
        raise EntityError(
            f"Found no regulon with >= {min_targets} targets at confidence {''.join(sorted(levels))} in '{p}' "
            f"({df['tf'].nunique()} TFs, {n_small} too small); expected at least one. "
            "Fix: widen confidence (e.g. 'ABCD') or lower min_targets."
        )
    return EntitySet(entities)
