"""Property-based and fuzz tests: parsers and validators raise only their own errors, valid input round-trips.

Extends test_actions.py's grammar properties (random actions round-trip, random text raises only
PerturbationParseError) with byte-level fuzzing, and covers the gene-set readers, ``register`` and
``read_h5ad`` the same way.
"""

from __future__ import annotations

import gzip
import tempfile
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bioworld.actions import Action, Perturbation, parse_action, parse_actions
from bioworld.data import read_h5ad, register
from bioworld.entities import EntitySet
from bioworld.errors import DataValidationError, EntityError, PerturbationParseError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder per module (hypothesis runs many examples per test; function fixtures would be reused)."""
    return tmp_path_factory.mktemp("fuzz")


def _file(scratch: Path, name: str, data: bytes) -> Path:
    d = Path(tempfile.mkdtemp(dir=scratch))
    p = d / name
    p.write_bytes(data)
    return p


# ============================================================================ the action parser
_TEXT_FROM_BYTES = st.binary(max_size=40).map(lambda b: b.decode("utf-8", errors="surrogateescape"))
_LATIN1 = st.binary(max_size=40).map(lambda b: b.decode("latin-1"))


@FUZZ
@given(st.one_of(_TEXT_FROM_BYTES, _LATIN1))
@example("\udcff")
@example("ko:\x00")
@example('silence:"')
@example("A+ctrl+ctrl")
def test_parse_action_random_bytes_only_parse_errors(text):
    try:
        action = parse_action(text)
    except PerturbationParseError:
        return
    assert isinstance(action, Action)
    assert parse_action(action.label) == action


@FUZZ
@given(st.lists(st.one_of(_TEXT_FROM_BYTES, st.sampled_from(["control", "STAT1", "A+B", "x@1", "kd:A:0.5"])),
                max_size=6))
def test_parse_actions_batch_only_parse_errors(labels):
    try:
        actions = parse_actions(labels)
    except PerturbationParseError as err:
        assert "do not parse" in str(err)
        return
    assert [a.label for a in actions] == [parse_action(lab).label for lab in labels]


_GENE = st.from_regex(r"[A-Z][A-Z0-9]{0,5}(-[A-Z0-9]{1,3})?", fullmatch=True)
_QUOTED_NAME = st.text(
    alphabet=st.characters(blacklist_characters='"', blacklist_categories=("Cc", "Cs")), min_size=1, max_size=8
).filter(lambda s: s == s.strip())
_PERT = st.one_of(
    st.builds(Perturbation, st.just("ko"), st.one_of(_GENE, _QUOTED_NAME)),
    st.builds(Perturbation, st.just("kd"), _GENE, st.sampled_from([0.25, 0.5, 1.0, 1e-3])),
    st.builds(lambda n, d: Perturbation("compound", n, dose=d), st.one_of(_GENE, _QUOTED_NAME),
              st.sampled_from([0.0, 1.0, 3.33, 1e-05, 1e20])),
    st.builds(Perturbation, st.just("silence"), st.one_of(_GENE, _QUOTED_NAME)),
)


@FUZZ
@given(st.lists(_PERT, min_size=1, max_size=4, unique_by=lambda p: ("gene" if p.is_gene else p.kind, p.target)),
       st.randoms(use_true_random=False))
def test_components_in_any_order_and_quoting_round_trip(perts, rnd):
    """Joining the components' own strings in any order gives the same action (quoted names included)."""
    parts = [str(p) for p in perts]
    rnd.shuffle(parts)
    action = parse_action("+".join(parts))
    assert action == Action(tuple(perts))
    assert parse_action(action.label) == action


# ======================================================================== GMT and weight tables
_FIELD = st.text(
    alphabet=st.characters(blacklist_characters="\t\n\r", blacklist_categories=("Cs",)), min_size=1, max_size=12
).map(str.strip).filter(lambda s: s != "" and not s.startswith("#"))
_GENE_FIELD = st.text(
    alphabet=st.characters(blacklist_characters="\t\n\r", blacklist_categories=("Cs",)), min_size=1, max_size=8
).map(str.strip).filter(bool)


@FUZZ
@given(st.dictionaries(_FIELD, st.tuples(_FIELD, st.lists(_GENE_FIELD, min_size=1, max_size=6, unique=True)),
                       min_size=1, max_size=5),
       st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_random_valid_gmt_round_trips(scratch, sets, newline, gz):
    text = newline.join(f"{name}\t{desc}\t" + "\t".join(genes) for name, (desc, genes) in sets.items()) + newline
    data = text.encode("utf-8")
    path = _file(scratch, "sets.gmt.gz" if gz else "sets.gmt", gzip.compress(data) if gz else data)
    es = EntitySet.from_gmt(path, name_column="first")
    assert es.names == list(sets)
    for ent in es:
        assert list(ent.genes) == sets[ent.name][1]
        assert set(ent.weights) == {1.0}
    assert EntitySet.from_dict(es.to_dict()).hash() == es.hash()


@FUZZ
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
@example("\t\t\n")
@example("A\tB\t \n")
@example("A\tB\tG\nA\tC\tG\n")
def test_random_text_gmt_only_entity_errors(scratch, text):
    try:
        EntitySet.from_gmt(_file(scratch, "x.gmt", text.encode("utf-8")))
    except EntityError:
        pass


@FUZZ
@given(st.binary(max_size=200))
@example(b"\xff\xfe\tdesc\tA\n")
def test_random_bytes_gmt_only_entity_errors(scratch, data):
    for name in ("x.gmt", "x.gmt.gz"):
        try:
            EntitySet.from_gmt(_file(scratch, name, data))
        except EntityError:
            pass


_WEIGHT = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
_TABLE_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9_.\-]{0,8}", fullmatch=True)


@FUZZ
@given(st.dictionaries(_TABLE_NAME, st.dictionaries(_TABLE_NAME, _WEIGHT, min_size=1, max_size=5),
                       min_size=1, max_size=4),
       st.sampled_from(["tsv", "csv"]))
def test_random_valid_weight_table_round_trips(scratch, table, ext):
    sep = "," if ext == "csv" else "\t"
    rows = [sep.join(["gene", "pathway", "weight"])]
    rows += [sep.join([g, s, repr(w)]) for s, genes in table.items() for g, w in genes.items()]
    es = EntitySet.from_weight_table(_file(scratch, f"w.{ext}", ("\n".join(rows) + "\n").encode()))
    assert es.names == list(table)
    for ent in es:
        assert list(ent.genes) == list(table[ent.name])
        # pandas' number parser is not round-trip exact (off by <= 1 ulp for some 17-digit reprs)
        assert np.allclose(ent.weights, list(table[ent.name].values()), rtol=1e-12, atol=0)  # pandas float parsing may be off by an ulp


@FUZZ
@given(st.one_of(st.binary(max_size=200),
                 st.text(alphabet="gene\tpathway,weight\n\"1.x-e ", max_size=120).map(str.encode),
                 st.text(alphabet="ab\t,\"\n1.-e#", max_size=80).map(lambda s: ("gene\tpathway\tweight\n" + s).encode())))
def test_random_bytes_weight_tables_only_entity_errors(scratch, data):
    for name in ("w.tsv", "w.csv", "w.tsv.gz"):
        try:
            EntitySet.from_weight_table(_file(scratch, name, data))
        except EntityError:
            pass


# ============================================================================ AnnData validation
_LABELS = ["control", "ctrl", "Control", " control", "STAT1", "IRF1", "A+B", "", "drug@1", "x y", "nan",
           "ko:STAT1", "silence:P", "+", "@"]
_GENES = ["STAT1", "IRF1", "JAK2", "ENSG00000115415", "ENSG00000125347.1", "G1", "", "nan", "A+B"]
_VALUES = st.one_of(st.integers(0, 50).map(float), st.floats(width=32),
                    st.sampled_from([0.0, 1.0, 0.5, -1.0, 100.0, 1e30, np.nan, np.inf, -np.inf]))


@st.composite
def _adata_and_kwargs(draw):
    n, g = draw(st.integers(0, 7)), draw(st.integers(0, 5))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.uint8, np.float16]))
    with np.errstate(all="ignore"):
        X = np.array(draw(st.lists(_VALUES, min_size=n * g, max_size=n * g)), dtype=np.float64).reshape(n, g)
        if np.issubdtype(dtype, np.integer):
            X = np.abs(np.nan_to_num(X, nan=0, posinf=1, neginf=-1).clip(-100, 100))
        X = X.astype(dtype)
    if dtype is not np.float16 and draw(st.booleans()):
        X = sp.csr_matrix(X)
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n)])
    labels = pd.Series(draw(st.lists(st.one_of(st.sampled_from(_LABELS), st.none(), st.text(max_size=4)),
                                     min_size=n, max_size=n)), index=obs.index, dtype=object)
    obs[draw(st.sampled_from(["perturbation", "condition"]))] = (
        labels.astype("category") if draw(st.booleans()) else labels)
    dose_key = None
    if draw(st.booleans()):
        obs["dose"] = pd.Series(draw(st.lists(st.one_of(st.floats(), st.text(max_size=3), st.none(), st.integers()),
                                              min_size=n, max_size=n)), index=obs.index, dtype=object)
        dose_key = "dose" if draw(st.booleans()) else None
    var = draw(st.lists(st.one_of(st.sampled_from(_GENES), st.text(max_size=5)), min_size=g, max_size=g))
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(var, dtype=object)))
    kwargs = dict(
        perturbation_key=draw(st.sampled_from(["perturbation", "condition", "absent"])),
        control=draw(st.sampled_from(["control", "ctrl", "Control"])),
        input=draw(st.sampled_from(["counts", "log"])),
        min_cells_per_group=draw(st.integers(1, 3)),
        dose_key=dose_key,
        id_map=draw(st.sampled_from([None, "auto", {}, {"ENSG00000115415": "STAT1"}])),
    )
    return adata, kwargs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_adata_and_kwargs())
def test_register_random_anndata_succeeds_or_data_validation_error(case):
    adata, kwargs = case
    X_before = adata.X.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            reg = register(adata, **kwargs)
        except DataValidationError:
            pass
        else:
            assert reg.n_cells == adata.n_obs and len(reg.genes) == adata.n_vars
            assert reg.control in set(adata.obs[kwargs["perturbation_key"]].astype(str))
    after = adata.X.toarray() if sp.issparse(adata.X) else adata.X
    before = X_before.toarray() if sp.issparse(X_before) else X_before
    assert np.array_equal(after, before, equal_nan=True)  # X is never modified


# ===================================================================================== read_h5ad
@pytest.fixture(scope="module")
def valid_h5ad_bytes(scratch) -> bytes:
    a = ad.AnnData(np.arange(12, dtype=np.float32).reshape(4, 3),
                   obs=pd.DataFrame({"perturbation": ["control", "A", "A", "control"]}, index=list("abcd")),
                   var=pd.DataFrame(index=["G1", "G2", "G3"]))
    path = scratch / "valid.h5ad"
    a.write_h5ad(path)
    return path.read_bytes()


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([0, 8, 512]))
def test_read_h5ad_random_bytes_only_data_validation_errors(scratch, valid_h5ad_bytes, data, keep):
    """Random bytes, alone or after the first bytes of a real h5ad (HDF5 signature / superblock)."""
    with pytest.raises(DataValidationError):
        read_h5ad(_file(scratch, "x.h5ad", valid_h5ad_bytes[:keep] + data))


@FUZZ
@given(st.data())
def test_read_h5ad_truncated_only_data_validation_errors(scratch, valid_h5ad_bytes, data):
    n = data.draw(st.integers(0, len(valid_h5ad_bytes) - 1))
    with pytest.raises(DataValidationError):
        read_h5ad(_file(scratch, "t.h5ad", valid_h5ad_bytes[:n]))


def test_read_h5ad_unknown_encoding_is_a_data_validation_error(scratch, valid_h5ad_bytes):
    path = _file(scratch, "newer.h5ad", valid_h5ad_bytes)
    with h5py.File(path, "r+") as f:
        f["obs"].attrs["encoding-version"] = "9.9.9"
    with pytest.raises(DataValidationError, match="newer.h5ad"):
        read_h5ad(path)
