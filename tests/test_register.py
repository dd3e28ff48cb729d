"""register(): validation messages, small-group reporting, round-trips, normalize, summaries."""

from __future__ import annotations

import dataclasses
import json
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bioworld.data import Registration, get_registration, normalize, register
from bioworld.actions import format_registration
from bioworld.data._register import DataWarning
from bioworld.errors import BioworldError, DataValidationError


def _counts(labels, n_genes=6, seed=0, sparse=True, var_names=None):
    rng = np.random.default_rng(seed)
    X = rng.poisson(2.0, size=(len(labels), n_genes)).astype(np.float32)
    X[:, 0] += 1  # no all-zero cells
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))])
    var = pd.DataFrame(index=var_names or [f"G{i}" for i in range(n_genes)])
    return ad.AnnData(X=sp.csr_matrix(X) if sparse else X, obs=obs, var=var)


LABELS = ["control"] * 5 + ["STAT1"] * 4 + ["IRF1"] * 3 + ["IRF1+STAT1"] * 3


@pytest.fixture
def toy():
    return _counts(LABELS)


def _raises(adata, match, **kw):
    with pytest.raises(DataValidationError, match=match) as err:
        register(adata, **kw)
    assert isinstance(err.value, BioworldError)
    return str(err.value)


# ---------------------------------------------------------------------------------------------
# valid data


def test_register_toy_fields_and_uns(toy):
    reg = register(toy)
    assert isinstance(reg, Registration)
    assert (reg.n_cells, reg.n_genes) == (15, 6)
    assert reg.control_n_cells == 5
    assert reg.perturbations == {"STAT1": 4, "IRF1": 3, "IRF1+STAT1": 3}
    assert reg.labels == ["control", "STAT1", "IRF1", "IRF1+STAT1"]
    assert reg.dropped == {} and reg.genes == [f"G{i}" for i in range(6)]
    stored = toy.uns["bioworld"]["registration"]
    assert stored["control"] == "control" and stored["n_cells"] == 15
    assert get_registration(toy) == reg
    with pytest.raises(dataclasses.FrozenInstanceError):
        reg.control = "x"  # type: ignore[misc]


def test_registration_json_and_h5ad_round_trip(toy, tmp_path):
    with pytest.warns(DataWarning):
        reg = register(toy, min_cells_per_group=4)
    assert reg.dropped  # non-empty tables survive both round trips
    back = Registration.from_dict(json.loads(json.dumps(reg.to_dict())))
    assert back == reg
    path = tmp_path / "r.h5ad"
    toy.write_h5ad(path)
    assert get_registration(ad.read_h5ad(path)) == reg


def test_get_registration_unregistered(toy):
    with pytest.raises(DataValidationError, match="not registered"):
        get_registration(toy)


def test_register_papalexi(papalexi):
    reg = register(papalexi, replicate_key="bio_rep")
    assert (reg.n_cells, reg.n_genes) == (16527, 299)
    assert reg.control_n_cells == 2386
    assert len(reg.perturbations) == 20 and reg.dropped == {}
    assert reg.perturbations["SPI1"] == 48
    assert any("3 replicates" in f for f in reg.findings)


def test_register_l1000_with_loader_kwargs(l1000):
    kwargs = dict(l1000.uns["bioworld"]["loader"]["register_kwargs"])
    reg = register(l1000, **kwargs)
    assert (reg.n_cells, reg.n_genes) == (341, 978)
    assert reg.input == "log" and reg.control_n_cells == 26
    assert len(reg.perturbations) == 315 and reg.obs_unit == "wells"
    assert reg.dose_key == "pert_dose" and reg.compound_id_key == "pert_id"


def test_l1000_declared_as_counts_suggests_log(l1000):
    msg = _raises(l1000, "looks log-normalised", input="counts", min_cells_per_group=1)
    assert "input='log'" in msg


def test_dense_and_sparse_agree():
    a = register(_counts(LABELS, sparse=True))
    b = register(_counts(LABELS, sparse=False))
    assert a == b


# ---------------------------------------------------------------------------------------------
# broken inputs: each message names what was found, what was expected, and the fix


def test_missing_perturbation_key_lists_columns(toy):
    toy.obs["condition"] = toy.obs["perturbation"]
    msg = _raises(toy, "not a column of adata.obs", perturbation_key="conditon")
    assert "'condition'" in msg and "available columns" in msg and "Fix" in msg


def test_missing_control_suggests_case_variant(toy):
    msg = _raises(toy, "control label 'Control' not found", control="Control")
    assert "'control' differs only in case" in msg
    assert "Fix: pass control=" in msg


def test_missing_control_suggests_known_control_names():
    adata = _counts(["non-targeting"] * 4 + ["STAT1"] * 4)
    msg = _raises(adata, "control label 'control' not found")
    assert "'non-targeting' looks like a control label" in msg


def test_empty_and_nan_labels():
    adata = _counts(LABELS)
    labels = adata.obs["perturbation"].astype(object)
    labels.iloc[2] = np.nan
    labels.iloc[7] = ""
    adata.obs["perturbation"] = labels
    msg = _raises(adata, r"2 empty or missing \(NaN\) labels")
    assert "'c2'" in msg and "Fix" in msg


def test_stray_whitespace_is_an_error_not_stripped():
    adata = _counts(["control"] * 4 + ["STAT1 "] * 3 + ["IRF1"] * 3)
    msg = _raises(adata, "stray whitespace")
    assert "'STAT1 '" in msg and ".str.strip()" in msg and "command line: in the file" in msg  # both audiences
    assert "STAT1 " in set(adata.obs["perturbation"].astype(str))  # untouched


def test_whitespace_around_plus_is_an_error():
    adata = _counts(["control"] * 4 + ["IRF1 + STAT1"] * 3)
    _raises(adata, "stray whitespace")


def test_nan_in_X():
    adata = _counts(LABELS)
    adata.X.data[3] = np.nan
    msg = _raises(adata, "1 NaN and 0 infinite values")
    assert "expected finite" in msg


def test_inf_in_dense_X():
    adata = _counts(LABELS, sparse=False)
    adata.X[0, 0] = np.inf
    _raises(adata, "0 NaN and 1 infinite values")


def test_negative_values():
    adata = _counts(LABELS, sparse=False)
    adata.X[1, 2] = -0.5
    msg = _raises(adata, "1 negative values", input="log")
    assert "sc.pp.scale" in msg


def test_log_data_declared_as_counts():
    adata = _counts(LABELS)
    adata.X = adata.X.log1p()
    msg = _raises(adata, "looks log-normalised")
    assert "input='log'" in msg


def test_normalised_non_integer_counts():
    adata = _counts(LABELS)
    X = adata.X.toarray()
    adata.X = sp.csr_matrix(X / X.sum(1, keepdims=True) * 1e4)  # CP10k, not logged
    msg = _raises(adata, "expected raw integer UMI counts")
    assert "CP10k" in msg


def test_counts_declared_as_log():
    adata = _counts(LABELS)
    adata.X = adata.X.copy()
    adata.X.data[0] = 120.0
    msg = _raises(adata, "looks like raw counts", input="log")
    assert "input='counts'" in msg


def test_unknown_input_value(toy):
    _raises(toy, "expected 'counts'", input="raw")


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicated_var_names():
    adata = _counts(LABELS, var_names=["A", "B", "C", "A", "D", "E"])
    msg = _raises(adata, "1 duplicated gene names")
    assert "'A'" in msg and "var_names_make_unique" in msg


ENSEMBL = ["ENSG00000115415", "ENSG00000125347", "ENSG00000096968", "ENSG00000111640",
           "ENSG00000141510", "ENSG00000000000"]  # STAT1 IRF1 JAK2 GAPDH TP53 + one unknown


def test_ensembl_var_names_without_id_map():
    adata = _counts(LABELS, var_names=ENSEMBL)
    msg = _raises(adata, "look like Ensembl ids")
    assert "id_map='auto'" in msg and "gene_symbols_key" in msg


def test_ensembl_var_names_mapped_with_bundled_table():
    adata = _counts(LABELS, var_names=[e + ".7" if i == 0 else e for i, e in enumerate(ENSEMBL)])
    reg = register(adata, id_map="auto")
    assert reg.genes == ["STAT1", "IRF1", "JAK2", "GAPDH", "TP53", "ENSG00000000000"]
    assert list(adata.var["bw_gene_symbol"]) == reg.genes
    assert adata.var_names[0] == "ENSG00000115415.7"  # var_names untouched
    assert reg.gene_symbols_key == "bw_gene_symbol"
    assert any("mapped 5/6 Ensembl ids" in f for f in reg.findings)


def test_ensembl_with_custom_map_and_bad_map():
    adata = _counts(LABELS, var_names=ENSEMBL)
    reg = register(adata, id_map={e: f"S{i}" for i, e in enumerate(ENSEMBL)})
    assert reg.genes == [f"S{i}" for i in range(6)]
    _raises(_counts(LABELS, var_names=ENSEMBL), "only 0/6 Ensembl ids", id_map={"ENSG1": "X"})
    _raises(_counts(LABELS, var_names=ENSEMBL), "expected None, 'auto'", id_map="yes")


def test_gene_symbols_key_with_missing_and_shared_symbols():
    """A symbols column next to unique ids, as 10x files hold it: a symbol shared by two ids was refused with the
    hint 'adata.var_names_make_unique()' (the var_names were unique already), a missing one refused too. Now the
    id-map rule: shared symbols suffixed -1, -2, ..., missing ones keep the id; both findings."""
    adata = _counts(LABELS, var_names=ENSEMBL)
    adata.var["symbol"] = ["STAT1", "IRF1", "STAT1", None, "TP53", ""]
    reg = register(adata, gene_symbols_key="symbol")
    assert reg.genes == ["STAT1", "IRF1", "STAT1-1", "ENSG00000111640", "TP53", "ENSG00000000000"]
    assert any("2 gene(s) without a symbol keep their var_name" in f for f in reg.findings), reg.findings
    assert any("1 symbol(s) shared by several genes (e.g. 'STAT1')" in f for f in reg.findings), reg.findings


def test_missing_perturbation_column_on_an_obs_without_columns():
    """Cells with no obs column at all read 'available columns: .' (an empty list shown as nothing)."""
    adata = _counts(LABELS)
    adata.obs = adata.obs.drop(columns=["perturbation"])
    _raises(adata, r"available columns: none\. Fix")


def test_a_second_control_like_label_is_a_finding():
    """'non-targeting' next to the control 'NT' (two names for control guides) was trained as a perturbation named
    'non-targeting' with no word about it."""
    adata = _counts(["NT"] * 4 + ["non-targeting"] * 4 + ["A"] * 4)
    reg = register(adata, control="NT")
    assert any("'non-targeting' (4 cells) reads like a control label but the control is 'NT'" in f
               for f in reg.findings), reg.findings
    assert not any("reads like a control" in f for f in register(_counts(["NT"] * 4 + ["A"] * 4), control="NT").findings)


def test_gene_symbols_key_absent(toy):
    msg = _raises(toy, "gene_symbols_key 'symbol' is not a column of adata.var", gene_symbols_key="symbol")
    assert "available columns" in msg


def test_gene_symbols_key_used(toy):
    toy.var["symbol"] = [f"S{i}" for i in range(6)]
    reg = register(toy, gene_symbols_key="symbol")
    assert reg.genes == [f"S{i}" for i in range(6)]


def test_dose_key_non_numeric():
    adata = _counts(["control"] * 4 + ["drug@1"] * 4)
    adata.obs["dose"] = ["0"] * 4 + ["1 furlong", "1 furlong", "1", "1"]
    msg = _raises(adata, "2 non-numeric values", dose_key="dose", input="counts")
    assert "'1 furlong'" in msg and "Fix" in msg and "str.replace" not in msg


def test_dose_key_reads_molar_units_and_refuses_mixing_them_with_bare_numbers():
    """'1 um' / '100nM' / '0.1 µM' were refused as non-numeric (with a hint, .str.replace(' um', ''), that missed
    '1uM' and 'nM'); they are read in µM and reported. Bare non-zero numbers next to them are ambiguous."""
    adata = _counts(["control"] * 4 + ["drug@1"] * 2 + ["drug@0.1"] * 2)
    adata.obs["dose"] = ["0"] * 4 + ["1 um", "1uM", "100nM", "0.1 \u00b5M"]
    reg = register(adata, dose_key="dose", input="counts")
    assert any("read in µM" in f and "'100nM' -> 0.1" in f for f in reg.findings), reg.findings
    adata.obs["dose"] = ["0"] * 4 + ["1 um", "1uM", "0.1", "0.1"]
    _raises(adata, r"some doses with a unit .*'1 um'.* others without .*'0.1'", dose_key="dose", input="counts")


def test_dose_key_with_bare_names_is_refused_not_ignored():
    """WorldModel(adata, dose_key='dose') on bare compound names trained them as gene knockouts and ignored the
    doses (the CLI joins NAME@DOSE itself); the finding even advised giving the doses in a dose column."""
    adata = _counts(["DMSO"] * 4 + ["drugA"] * 4)
    adata.obs["dose"] = [0.0] * 4 + [1.0] * 4
    msg = _raises(adata, r"dose_key 'dose' is given but no label .* is a compound action NAME@DOSE", control="DMSO",
                  dose_key="dose")
    assert "compound_labels(adata, name_key='perturbation', dose_key='dose', control='DMSO')" in msg
    from bioworld.data import compound_labels

    key = compound_labels(adata, name_key="perturbation", dose_key="dose", control="DMSO")
    assert register(adata, perturbation_key=key, control="DMSO", dose_key="dose").perturbations == {"drugA@1": 4}


def test_dose_key_negative_placeholder():
    adata = _counts(["control"] * 4 + ["drug@1"] * 4)
    adata.obs["dose"] = [-666.0] * 4 + [1.0] * 4
    msg = _raises(adata, "negative or infinite", dose_key="dose")
    assert "-666" in msg


def test_missing_dose_compound_and_replicate_keys(toy):
    _raises(toy, "dose_key 'dose' is not a column", dose_key="dose")
    _raises(toy, "compound_id_key 'pert_id' is not a column", compound_id_key="pert_id")
    _raises(toy, "replicate_key 'rep' is not a column", replicate_key="rep")


def test_not_anndata():
    with pytest.raises(DataValidationError, match="expected an AnnData"):
        register(np.zeros((3, 3)))


def test_control_too_small():
    adata = _counts(["control"] * 2 + ["STAT1"] * 5)
    _raises(adata, "control 'control' has 2 cells")


# ---------------------------------------------------------------------------------------------
# small groups


def test_small_groups_are_reported_not_silently_dropped():
    adata = _counts(["control"] * 5 + ["STAT1"] * 4 + ["IRF1"] * 2 + ["JAK2"])
    with pytest.warns(DataWarning, match="2 perturbation group") as rec:
        reg = register(adata, min_cells_per_group=3)
    assert "IRF1" in str(rec[0].message) and "JAK2" in str(rec[0].message)
    assert reg.dropped == {"IRF1": "2 cells < min_cells_per_group=3", "JAK2": "1 cells < min_cells_per_group=3"}
    assert reg.perturbations == {"STAT1": 4}
    assert any("set aside" in f for f in reg.findings)
    mask = reg.keep_mask(adata)
    assert mask.sum() == 9 and not mask[-3:].any()
    # and they survive a round trip through uns
    assert get_registration(adata).dropped == reg.dropped


def test_no_warning_when_all_groups_large(toy):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        register(toy)


# ---------------------------------------------------------------------------------------------
# normalize


def test_normalize_counts_matches_definition(toy):
    reg = register(toy)
    X = toy.X.toarray().copy()
    out = normalize(toy, reg)
    assert out.dtype == np.float32 and out.shape == (15, 6)
    expected = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_allclose(np.expm1(out.astype(np.float64)).sum(1), 1e4, rtol=1e-4)
    np.testing.assert_array_equal(toy.X.toarray(), X)  # not mutated


def test_normalize_matches_scanpy(papalexi):
    import scanpy as sc

    reg = register(papalexi)
    ours = normalize(papalexi, reg)
    ref = papalexi.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    np.testing.assert_allclose(ours, ref.X.toarray(), rtol=1e-5, atol=1e-5)


def test_normalize_zero_cell_and_log_passthrough():
    adata = _counts(LABELS, sparse=False)
    adata.X[0] = 0
    out = normalize(adata, register(adata))
    assert np.all(out[0] == 0) and np.isfinite(out).all()
    logged = _counts(LABELS)
    logged.X = logged.X.log1p()
    reg = register(logged, input="log")
    np.testing.assert_array_equal(normalize(logged, reg), logged.X.toarray().astype(np.float32))


def test_normalize_gene_mismatch(toy):
    reg = register(toy)
    with pytest.raises(DataValidationError, match="expected 6 as registered"):
        normalize(toy[:, :3], reg)


# ---------------------------------------------------------------------------------------------
# summaries (labels interpreted with bioworld.actions.parse_action)


def test_format_registration_papalexi(papalexi):
    text = format_registration(register(papalexi))
    assert "16,527 cells x 299 genes" in text
    assert "20 perturbations + control: 20 genetic single targets" in text
    assert "control 'control': 2,386 cells" in text
    assert "SPI1 (48)" in text


def test_format_registration_l1000(l1000):
    text = format_registration(register(l1000, **l1000.uns["bioworld"]["loader"]["register_kwargs"]))
    assert "341 wells x 978 genes" in text
    assert "control 'control': 26 wells" in text
    assert "53 compounds x 6 doses" in text
    assert "doses 0.04, 0.12, 0.37, 1.11, 3.33, 10" in text


def test_format_registration_combos_and_findings():
    adata = _counts(["control"] * 5 + ["STAT1"] * 4 + ["IRF1"] * 3 + ["IRF1+STAT1"] * 3 + ["JAK2"])
    with pytest.warns(DataWarning):
        text = format_registration(register(adata))
    assert "2 genetic single targets; 1 combinations" in text
    assert "set aside: 1 groups" in text and "findings:" in text


def test_compound_at_dose_zero_is_a_finding():
    """'x@0' cells were trained as a perturbation of their own with no word (often vehicle controls by another name)."""
    a = _counts(["DMSO"] * 5 + ["tram@0"] * 3 + ["tram@1"] * 3 + ["tram@0.0+JAK2"] * 3 + ["x@1e-3"] * 3)
    reg = register(a, perturbation_key="perturbation", control="DMSO")
    found = [f for f in reg.findings if "dose 0" in f]
    assert len(found) == 1 and "2 label(s)" in found[0] and "'tram@0'" in found[0] and "'DMSO'" in found[0], found
    assert "tram@0" in reg.perturbations  # kept, not dropped
    plain = register(_counts(["DMSO"] * 5 + ["tram@1"] * 3), perturbation_key="perturbation", control="DMSO")
    assert not [f for f in plain.findings if "dose 0" in f]
