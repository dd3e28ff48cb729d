"""Bundled data (checksums) and readers (papalexi, L1000, h5ad, GEARS / scPerturb layouts)."""

from __future__ import annotations

import shutil
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bioworld.data import (
    bundled_path,
    load_l1000,
    read_gears,
    read_h5ad,
    verify_bundled,
)
from bioworld.data import _bundled
from bioworld.data._io import format_dose
from bioworld.data._register import DataWarning
from bioworld.errors import DataValidationError

PAPALEXI = "perturbseq/papalexi2021_thp1_ko.h5ad"
L1000 = "compounds/l1000_a375_lincs_dose_response.h5ad"


# ---------------------------------------------------------------------------------------------
# bundled files


def test_verify_bundled_all_files_ok():
    result = verify_bundled()
    listed = [line.split(maxsplit=1)[1] for line in
              (_bundled._REPO_DATA_DIR / "SHA256SUMS").read_text().splitlines() if line.strip()]
    assert sorted(result) == sorted(listed)
    assert len(result) == 19  # 10 expression/gene-set files + atlas, 2 compound tables, 2 networks, 2 embedding files, 2 pretrained atlas files
    assert all(result.values())


def test_bundled_path_resolves_under_repo_data():
    path = bundled_path(PAPALEXI)
    assert path == _bundled._REPO_DATA_DIR / PAPALEXI
    assert path.is_file()


def test_bundled_path_unknown_name_suggests_close_match():
    with pytest.raises(DataValidationError, match="unknown bundled file") as err:
        bundled_path("perturbseq/papalexi2021_thp1.h5ad")
    assert PAPALEXI in str(err.value)


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    """A copy of the bundled folder, selected with BIOWORLD_DATA_DIR."""
    dst = tmp_path / "data"
    shutil.copytree(_bundled._REPO_DATA_DIR, dst)
    monkeypatch.setenv("BIOWORLD_DATA_DIR", str(dst))
    return dst


def test_env_override_is_used(data_copy):
    assert _bundled.data_dir() == data_copy
    assert bundled_path(L1000) == data_copy / L1000


def test_tampered_file_is_detected(data_copy):
    target = data_copy / L1000
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip one byte
    target.write_bytes(bytes(raw))
    with pytest.raises(DataValidationError) as err:
        bundled_path(L1000)
    msg = str(err.value)
    assert "checksum mismatch" in msg and "found SHA-256" in msg and "expected" in msg
    assert "git checkout -- bioworld/_data/" + L1000 in msg
    status = verify_bundled()
    assert status[L1000] is False
    assert status[PAPALEXI] is True
    # the loader goes through the same check
    with pytest.raises(DataValidationError, match="checksum mismatch"):
        load_l1000()


def test_tampered_sums_in_override_dir_do_not_help(data_copy):
    """Expected checksums come from the repository, not from the override folder."""
    (data_copy / L1000).write_bytes(b"not the file")
    sums = data_copy / "SHA256SUMS"
    import hashlib

    fake = hashlib.sha256(b"not the file").hexdigest()
    lines = [f"{fake}  {L1000}" if line.endswith(L1000) else line for line in sums.read_text().splitlines()]
    sums.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataValidationError, match="checksum mismatch"):
        bundled_path(L1000)


def test_missing_bundled_file(data_copy):
    (data_copy / PAPALEXI).unlink()
    with pytest.raises(DataValidationError, match="bundled file missing") as err:
        bundled_path(PAPALEXI)
    assert "BIOWORLD_DATA_DIR" in str(err.value)
    assert verify_bundled()[PAPALEXI] is False


def test_checksum_computed_once_per_process(data_copy, monkeypatch):
    calls = []
    real = _bundled.hashlib.sha256

    def counting():
        calls.append(1)
        return real()

    monkeypatch.setattr(_bundled.hashlib, "sha256", counting)
    for _ in range(3):
        bundled_path(PAPALEXI)
    assert len(calls) == 1


def test_checksum_cache_rehashes_modified_file(data_copy):
    path = bundled_path(L1000)  # hashed and cached
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(DataValidationError, match="checksum mismatch"):
        bundled_path(L1000)


# ---------------------------------------------------------------------------------------------
# bundled datasets


def test_papalexi_shape_and_labels(papalexi):
    assert papalexi.shape == (16527, 299)
    assert sp.isspmatrix_csr(papalexi.X) or isinstance(papalexi.X, sp.csr_array)
    labels = papalexi.obs["perturbation"].astype(str)
    counts = labels.value_counts()
    assert counts["control"] == 2386
    assert len(counts) == 21
    assert {"STAT1", "IFNGR1", "IRF1", "SPI1", "MARCH8"} <= set(counts.index)
    assert counts["SPI1"] == 48
    x = papalexi.X.data
    assert np.all(x >= 0) and np.all(x == np.round(x))  # raw counts
    assert papalexi.var_names.is_unique


def test_fixture_copies_are_independent(papalexi, _papalexi_session):
    papalexi.obs["perturbation"] = "x"
    papalexi.uns["scratch"] = 1
    assert "scratch" not in _papalexi_session.uns
    assert (_papalexi_session.obs["perturbation"] == "control").sum() == 2386


def test_l1000_shape_symbols_and_probe_ids(l1000):
    assert l1000.shape == (341, 978)
    assert l1000.var_names.is_unique
    assert (l1000.var_names == l1000.var["pr_gene_symbol"].astype(str)).all()
    assert l1000.var.loc["PSME1", "probe_id"] == "200814_at"
    assert l1000.uns["bioworld"]["obs_unit"] == "wells"
    assert list(l1000.uns["bioworld"]["loader"]["duplicated_symbols"]) == []


def test_l1000_perturbation_labels(l1000):
    obs = l1000.obs
    lab = obs["perturbation"].astype(str)
    assert (lab == "control").sum() == 26
    assert set(obs.loc[lab == "control", "pert_iname"].astype(str)) == {"DMSO"}
    assert "PLX-4720@10" in set(lab) and "PLX-4720@3.33" in set(lab) and "PLX-4720@0.04" in set(lab)
    treated = obs[lab != "control"]
    assert len(treated) == 315
    expected = treated["pert_iname"].astype(str) + "@" + treated["pert_dose"].map(format_dose)
    assert (lab[lab != "control"] == expected).all()
    assert lab[lab != "control"].str.split("@").str[0].nunique() == 53
    assert "pert_iname" in obs and "pert_dose" in obs


def test_format_dose_trims_trailing_zeros():
    assert format_dose(10.0) == "10"
    assert format_dose(3.33) == "3.33"
    assert format_dose(0.04) == "0.04"
    assert format_dose(0.5) == "0.5"
    with pytest.raises(DataValidationError):
        format_dose(float("nan"))


# ---------------------------------------------------------------------------------------------
# read_h5ad


def test_read_h5ad_missing_file(tmp_path):
    with pytest.raises(DataValidationError, match="file not found"):
        read_h5ad(tmp_path / "nope.h5ad")


def test_read_h5ad_corrupt_file(tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"this is not hdf5" * 10)
    with pytest.raises(DataValidationError, match="not an HDF5 file"):
        read_h5ad(bad)


def test_read_h5ad_truncated_file(tmp_path):
    src = bundled_path(L1000)
    bad = tmp_path / "trunc.h5ad"
    bad.write_bytes(src.read_bytes()[:5000])
    with pytest.raises(DataValidationError, match="corrupt|could not be read"):
        read_h5ad(bad)


def test_read_h5ad_folder(tmp_path):
    with pytest.raises(DataValidationError, match="is a folder"):
        read_h5ad(tmp_path)


# ---------------------------------------------------------------------------------------------
# GEARS / scPerturb


def _toy(obs: dict, var: pd.DataFrame, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    n = len(next(iter(obs.values())))
    X = sp.csr_matrix(rng.poisson(1.0, size=(n, len(var))).astype(np.float32))
    return ad.AnnData(X=X, obs=pd.DataFrame(obs, index=[f"c{i}" for i in range(n)]), var=var)


def test_read_gears_layout(tmp_path):
    var = pd.DataFrame(
        {"gene_name": ["STAT1", "IRF1", "JAK2", "GAPDH"]},
        index=["ENSG00000115415", "ENSG00000125347", "ENSG00000096968", "ENSG00000111640"],
    )
    cond = ["ctrl", "STAT1+ctrl", "ctrl+IRF1", "STAT1+IRF1", "JAK2+ctrl", "ctrl"]
    a = _toy({"condition": cond, "cell_type": ["K562"] * 6}, var)
    path = tmp_path / "gears.h5ad"
    a.write_h5ad(path)

    out = read_gears(path)
    # combinations come out with sorted components, as in the canonical action label
    assert list(out.obs["perturbation"].astype(str)) == ["control", "STAT1", "IRF1", "IRF1+STAT1", "JAK2", "control"]
    assert list(out.obs["condition"].astype(str)) == cond  # original kept
    assert list(out.var_names) == ["STAT1", "IRF1", "JAK2", "GAPDH"]
    assert list(out.var["gene_id"]) == list(var.index)
    assert out.uns["bioworld"]["loader"]["layout"] == "gears"
    np.testing.assert_array_equal(out.X.toarray(), a.X.toarray())


def test_read_gears_duplicate_symbols_are_made_unique(tmp_path):
    var = pd.DataFrame({"gene_name": ["A", "B", "A"]}, index=["ENSG00000000001", "ENSG00000000002", "ENSG00000000003"])
    path = tmp_path / "dup.h5ad"
    _toy({"condition": ["ctrl", "A+ctrl"]}, var).write_h5ad(path)
    with pytest.warns(DataWarning, match="occur more than once"):
        out = read_gears(path)
    assert list(out.var_names) == ["A", "B", "A-1"]
    assert list(out.uns["bioworld"]["loader"]["duplicated_symbols"]) == ["A"]


def test_read_gears_without_symbols_and_ensembl_ids_errors(tmp_path):
    var = pd.DataFrame(index=["ENSG00000115415", "ENSG00000125347"])
    path = tmp_path / "nosym.h5ad"
    _toy({"condition": ["ctrl", "STAT1+ctrl"]}, var).write_h5ad(path)
    with pytest.raises(DataValidationError, match="gene_name"):
        read_gears(path)


def test_read_gears_no_layout_columns(tmp_path):
    var = pd.DataFrame({"gene_name": ["A"]}, index=["g1"])
    path = tmp_path / "none.h5ad"
    _toy({"guide": ["x", "y"]}, var).write_h5ad(path)
    with pytest.raises(DataValidationError, match="cannot detect the layout"):
        read_gears(path)


def test_read_scperturb_with_nperts(tmp_path):
    var = pd.DataFrame({"ensembl_id": ["E1", "E2", "E3"]}, index=["AHR", "KLF1", "CEBPA"])
    obs = {
        "perturbation": ["control", "AHR", "AHR_KLF1", "CEBPA_KLF1", "NOT_A_GENE"],
        "nperts": [0, 1, 2, 2, 1],
    }
    path = tmp_path / "scp.h5ad"
    _toy(obs, var).write_h5ad(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        out = read_gears(path)
    assert list(out.obs["perturbation"].astype(str)) == ["control", "AHR", "AHR+KLF1", "CEBPA+KLF1", "NOT_A_GENE"]
    assert list(out.obs["perturbation_source"].astype(str)) == obs["perturbation"]
    assert out.uns["bioworld"]["loader"]["layout"] == "scperturb"
    assert list(out.var_names) == ["AHR", "KLF1", "CEBPA"]  # already symbols
    assert list(out.var["gene_id"]) == ["AHR", "KLF1", "CEBPA"]


def test_read_scperturb_without_nperts_splits_only_known_genes(tmp_path):
    var = pd.DataFrame(index=["AHR", "KLF1", "CEBPA"])
    obs = {"perturbation": ["control", "KLF1_AHR", "sgRNA_12", "CEBPA"]}
    path = tmp_path / "scp2.h5ad"
    _toy(obs, var).write_h5ad(path)
    with pytest.warns(DataWarning, match="could not be split reliably"):
        out = read_gears(path)
    assert list(out.obs["perturbation"].astype(str)) == ["control", "AHR+KLF1", "sgRNA_12", "CEBPA"]
    assert list(out.uns["bioworld"]["loader"]["unsplit_labels"]) == ["sgRNA_12"]


def test_read_gears_output_registers(tmp_path):
    from bioworld.data import register

    var = pd.DataFrame({"gene_name": ["STAT1", "IRF1"]}, index=["ENSG00000115415", "ENSG00000125347"])
    cond = ["ctrl"] * 4 + ["STAT1+ctrl"] * 3 + ["STAT1+IRF1"] * 2 + ["IRF1+STAT1"]
    path = tmp_path / "g.h5ad"
    _toy({"condition": cond}, var).write_h5ad(path)
    reg = register(read_gears(path))
    assert reg.control_n_cells == 4
    assert reg.perturbations == {"STAT1": 3, "IRF1+STAT1": 3}  # B+A and A+B merged
    assert reg.genes == ["STAT1", "IRF1"]


def test_repeated_cell_names_are_one_bioworld_warning_without_python_advice(tmp_path):
    """A file with repeated obs_names showed anndata's 'call `.obs_names_make_unique`' (a Python method) on the
    command line; it is one DataWarning in bioworld's words, from read_h5ad and from open_backed alike."""
    from bioworld.data import open_backed, read_h5ad

    a = ad.AnnData(np.ones((4, 2), np.float32), obs=pd.DataFrame(index=["x", "x", "y", "z"]))
    path = tmp_path / "dup.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.write_h5ad(path)
    for read in (read_h5ad, open_backed):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            read(path)
        texts = [str(w.message) for w in caught]
        assert not any("obs_names_make_unique" in t for t in texts), texts
        assert [t for t in texts if "cell name(s)" in t] == [
            "dup.h5ad: 1 cell name(s) (obs_names) occur more than once (e.g. ['x']); bioworld does not key cells by "
            "name, and answers with a row per cell suffix repeats -1, -2, ..."], texts
        assert all(w.category is DataWarning for w in caught if "cell name(s)" in str(w.message))
