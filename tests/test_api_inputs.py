"""The Python API as a scanpy user calls it: the caller's AnnData (or view) is never written to, answer rows
have unique obs_names, and arguments of the wrong kind are refused with a BioworldError that says what was
found and what was expected (not an AttributeError / TypeError from inside)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import bioworld as bw
from bioworld.errors import BioworldError, DataValidationError


def _assert_equal(a: ad.AnnData, b: ad.AnnData) -> None:
    """Same X, obs, var, uns keys, obsm and layers keys (what a caller would notice changing)."""
    def dense(x):
        return x.toarray() if hasattr(x, "toarray") else np.asarray(x)

    np.testing.assert_array_equal(dense(a.X), dense(b.X))
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert list(a.uns) == list(b.uns) and list(a.obsm) == list(b.obsm) and list(a.layers) == list(b.layers)


def _fresh(small_sim, **kw):
    from _helpers import sim_entities

    args = dict(entities=sim_entities(small_sim), nmf_programs=0, config={"max_steps": 2, "warmup_steps": 1})
    args.update(kw)
    return args


def test_world_model_leaves_the_callers_view_a_view(small_sim):
    """WorldModel(adata[mask]) used to write uns['bioworld'] into the view, which made anndata copy the whole
    matrix into it ('initializing view as actual') and changed the caller's object."""
    a = small_sim.adata
    view = a[a.obs["perturbation"].astype(str) != "P1_DRV1"]
    before = view.copy()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*view.*")
        bw.WorldModel(view, **_fresh(small_sim))
    assert view.is_view
    assert "bioworld" not in view.uns and "bioworld" not in a.uns
    _assert_equal(view, before)


def test_register_inplace_false_writes_nothing(small_sim):
    a = small_sim.adata.copy()
    reg = bw.data.register(a, inplace=False)
    assert "bioworld" not in a.uns and reg.n_cells == a.n_obs
    bw.data.register(a)  # the documented default still records the registration
    assert bw.data.get_registration(a) == reg


@pytest.mark.parametrize("bad", [None, 5, {"STAT1": 1}, []])
def test_predict_and_counterfactual_refuse_what_is_not_labels(tiny_trained, cells, bad):
    with pytest.raises(BioworldError, match="perturbations"):
        tiny_trained.predict(bad)
    with pytest.raises(BioworldError, match="interventions"):
        tiny_trained.counterfactual(cells, bad)


def test_repeated_labels_are_refused_not_answered_as_duplicate_rows(tiny_trained, cells):
    """predict(['P1_DRV1', 'P1_DRV1']) returned two rows with the same obs_name (anndata's 'not unique' warning)."""
    with pytest.raises(BioworldError, match=r"\['P1_DRV1'\] given more than once.*Fix"):
        tiny_trained.predict(["P1_DRV1", "P2_DRV1", "P1_DRV1"])
    with pytest.raises(BioworldError, match=r"\['P2_DRV1'\] given more than once"):
        tiny_trained.counterfactual(cells, ["P2_DRV1", "P2_DRV1"])
    labels = pd.Series(["P1_DRV1", "P2_DRV1"])  # a Series / array of distinct labels is fine
    assert list(tiny_trained.predict(labels).obs_names) == ["P1_DRV1", "P2_DRV1"]


@pytest.mark.filterwarnings("ignore:Observation names are not unique")  # anndata's, about the input
def test_counterfactual_on_cells_with_repeated_obs_names_gives_unique_rows(tiny_trained, cells):
    dup = cells.copy()
    dup.obs_names = ["cellA"] * 3 + [f"c{i}" for i in range(dup.n_obs - 3)]
    snap = dup.copy()
    with pytest.warns(bw.data.DataWarning, match=r"repeated names.*obs_names_make_unique\(\); command line: in the --cells file"):
        cf = tiny_trained.counterfactual(dup, ["P2_DRV1", "P1_DRV1"])
    assert cf.obs_names.is_unique
    assert list(cf.obs_names[:4]) == ["P2_DRV1|cellA", "P2_DRV1|cellA-1", "P2_DRV1|cellA-2", "P2_DRV1|c0"]
    assert list(cf.obs["bw_cell"][:3]) == ["cellA"] * 3  # the names as given
    ref = tiny_trained.counterfactual(cells, ["P2_DRV1", "P1_DRV1"])
    np.testing.assert_array_equal(cf.layers["delta"], ref.layers["delta"])
    _assert_equal(dup, snap)


@pytest.mark.parametrize("kind", ["ndarray", "DataFrame", "None"])
def test_cells_that_are_not_anndata_are_refused(tiny_trained, cells, kind):
    bad = {"ndarray": np.zeros((3, cells.n_vars)), "DataFrame": cells.to_df(), "None": None}[kind]
    calls = [lambda: tiny_trained.counterfactual(bad, ["P2_DRV1"]), lambda: tiny_trained.get_entity_latents(bad)]
    if bad is not None:  # predict(cells=None) means the model's reference cells
        calls.append(lambda: tiny_trained.predict(["P2_DRV1"], cells=bad))
    for call in calls:
        with pytest.raises(DataValidationError, match=f"cells is a {type(bad).__name__}; expected an AnnData"):
            call()


def test_panel_error_names_repeated_genes_and_where_the_genes_are(tiny_trained, cells):
    from bioworld.data._prepare import align_panel

    rep = cells.copy()
    rep.var_names = list(rep.var_names[:-1]) + [rep.var_names[0]]
    with pytest.raises(DataValidationError, match=rf"1 names are repeated \(e.g. \['{cells.var_names[0]}'\]\)"):
        tiny_trained.counterfactual(rep, ["P2_DRV1"])
    ids = cells.copy()
    ids.var["symbol"] = pd.Categorical(ids.var_names)  # scanpy layout: ids as names, symbols in a column
    ids.var_names = [f"ENSG{i:011d}" for i in range(ids.n_vars)]
    with pytest.raises(DataValidationError, match=r"cells.var\['symbol'\] holds the model's genes"):
        tiny_trained.counterfactual(ids, ["P2_DRV1"])
    genes = list(cells.var_names)  # a model named by ids whose cells come named by symbol, with one gene more
    more = ad.concat([cells, ad.AnnData(np.ones((cells.n_obs, 1), np.float32), obs=cells.obs[[]],
                                        var=pd.DataFrame(index=["EXTRA"]))], axis=1)
    from bioworld.data import DataWarning

    ids_of = [f"ID{i}" for i in range(len(genes))]
    with pytest.warns(DataWarning, match=r"cells have 1 genes the model was not trained on \(e.g. \['EXTRA'\]\)"):
        got = align_panel(more, ids_of, genes)  # read by symbol, the extra gene left out, named by the model's ids
    assert list(got.var_names) == ids_of
    assert np.array_equal(got.X.toarray() if hasattr(got.X, "toarray") else got.X,
                          cells.X.toarray() if hasattr(cells.X, "toarray") else cells.X)


def test_panel_error_names_genes_in_another_case_and_says_how_to_fix():
    """Cells whose genes are the model's in lower case were 'missing 2 and extra 2' with no word on the case and
    no 'Fix:'."""
    from bioworld.data._prepare import align_panel

    cells = ad.AnnData(np.ones((3, 3), np.float32), var=pd.DataFrame(index=["stat1", "irf1", "JAK2"]))
    with pytest.raises(DataValidationError, match=r"2 missing gene\(s\) are in the cells in another case \(e.g. "
                       r"'stat1' for 'STAT1', 'irf1' for 'IRF1'\).* Fix: "):
        align_panel(cells, ["STAT1", "IRF1", "JAK2"])


def test_world_model_arguments_of_the_wrong_kind(small_sim):
    a = small_sim.adata
    with pytest.raises(DataValidationError, match="adata is a DataFrame; expected an AnnData"):
        bw.WorldModel(a.to_df(), **_fresh(small_sim))
    for bad in (5, []):
        with pytest.raises(BioworldError, match="expected None .bundled Hallmark"):
            bw.WorldModel(a, **_fresh(small_sim, entities=bad))
    with pytest.raises(BioworldError, match="entities holds 5 .int."):
        bw.WorldModel(a, **_fresh(small_sim, entities=[5]))
    # one label as a string is one label (it was read letter by letter: "holdout labels ['1', 'D', 'P', ...]")
    assert bw.WorldModel(a, **_fresh(small_sim, holdout="P1_DRV1")).holdout == ["P1_DRV1"]


def test_answers_are_plain_anndata(tiny_trained, cells):
    pred = tiny_trained.predict("P1_DRV1", cells=cells)
    assert isinstance(pred, ad.AnnData) and pred.obs_names.is_unique and pred.var_names.is_unique


def test_loading_the_wrong_kind_of_path_says_what_to_load(tiny_trained, tmp_path):
    from bioworld.errors import CheckpointError

    d = tiny_trained.save(tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"bioworld.json' is a file; expected the model folder.*load the folder"):
        bw.WorldModel.load(d / "bioworld.json")  # was: "model directory ... does not exist"
    with pytest.raises(CheckpointError, match="holds one model .bioworld.json.: load it with bioworld.WorldModel.load"):
        bw.Ensemble.load(d)
    ens = tmp_path / "e"
    ens.mkdir()
    (ens / "ensemble.json").write_text("{}")
    with pytest.raises(CheckpointError, match="seed ensemble; load it with bioworld.Ensemble.load"):
        bw.WorldModel.load(ens)


@pytest.mark.parametrize(("option", "value"), [("n_boot", 0), ("n_boot", 2.5), ("max_cells", 0), ("screen_cells", 0),
                                               ("gene_pairs_top", -1), ("refine_top", -1), ("overlap", 2.0),
                                               ("readout_share", -0.1), ("n_boot", True)])
def test_prioritize_refuses_options_out_of_range(tiny_trained, cells, option, value):
    """n_boot=0 / max_cells=0 / screen_cells=0 crashed in numpy or torch (IndexError, RuntimeError); negative
    *_top were read as slices (gene_pairs_top=-1 silently dropped a single from the pairs)."""
    with pytest.raises(BioworldError, match=rf"{option}={value!r}; expected .*Fix"):
        tiny_trained.prioritize(cells, "down:SIM_P1", genes=["P1_DRV1"], entities=[], compounds=[], **{option: value})


def test_prioritize_takes_one_candidate_as_a_string(tiny_trained, cells):
    """genes='P1_DRV1' was read letter by letter ("candidates ['1'] are listed more than once")."""
    res = tiny_trained.prioritize(cells, "down:SIM_P1", genes="P2_DRV1", entities="SIM_P3", compounds=[],
                                  n_boot=5, pairs=False)
    assert sorted(res.table["intervention"]) == ["P2_DRV1", "silence:SIM_P3"]


def test_normalised_cells_for_a_counts_model_name_the_counts_layer(tiny_trained, cells):
    """Cells in scanpy's layout (log1p values in X, raw counts in layers['counts']) got the registration's advice
    "pass input='log'", which counterfactual does not take."""
    import scanpy as sc

    c = cells.copy()
    c.layers["counts"] = c.X.copy()
    sc.pp.normalize_total(c, target_sum=1e4)
    sc.pp.log1p(c)
    with pytest.raises(DataValidationError, match=r"trained on raw counts.*cells.X=cells.layers\['counts'\]") as err:
        tiny_trained.counterfactual(c, ["P2_DRV1"])
    assert "input='log'" not in str(err.value).split("Fix:")[1]
    del c.layers["counts"]
    with pytest.raises(DataValidationError, match="give the cells' raw counts; no layer or .raw holds integer counts"):
        tiny_trained.predict(["P2_DRV1"], cells=c)
    c.X = cells.X.copy()  # raw counts again: answered
    assert tiny_trained.counterfactual(c, ["P2_DRV1"]).n_obs == c.n_obs


@pytest.fixture(scope="module")
def ids_model(small_sim):
    """A model trained on Ensembl-like var_names with the symbols in var['symbol'] (scanpy's gene_symbols layout)."""
    a = small_sim.adata.copy()
    a.var["symbol"] = a.var_names.astype(str)
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    wm = bw.WorldModel(a, **_fresh(small_sim, gene_symbols_key="symbol", replicate_key="replicate"))
    return wm.train(progress=False), a


def test_answers_of_a_model_named_by_ids_carry_the_symbols(ids_model, small_sim):
    """The answers carry the symbols in var['bw_gene_symbol'], but bw.tl.enrichment ranked the ids (var_names): it
    found no gene of any set and returned an empty table without a word; effect_bars labelled the bars by id."""
    import matplotlib

    matplotlib.use("Agg")
    wm, a = ids_model
    cells = a[a.obs["perturbation"].astype(str) == "control"][:12].copy()
    pred, cf = wm.predict(["P1_DRV1"]), wm.counterfactual(cells, ["P1_DRV1"])
    for out in (pred, cf):
        assert list(out.var_names) == list(a.var_names) and list(out.var["bw_gene_symbol"]) == list(a.var["symbol"])
    sets = {name: list(genes) for name, genes in small_sim.gmt.items()}
    table = bw.tl.enrichment(cf, "P1_DRV1", gene_sets=sets, permutations=20, min_size=3)
    assert len(table) == len(sets)
    ax = bw.pl.effect_bars(pred, "P1_DRV1", n_genes=3)
    assert all(not t.get_text().startswith("ENSG") for t in ax.get_yticklabels())
    with pytest.warns(UserWarning, match="nothing was tested and the table is empty"):
        assert bw.tl.enrichment(cf, "P1_DRV1", gene_sets={"X": ["NOPE1", "NOPE2", "NOPE3"]}, min_size=3).empty


def test_compound_targets_one_gene_as_a_string_and_wrong_kinds(tiny_trained):
    """{'mydrug': 'P1_DRV1'} was read letter by letter (targets 'P', '1', '_', ...: "no representable target");
    compound_targets=5 raised TypeError from pathlib."""
    one = tiny_trained.predict(["mydrug@1"], compound_targets={"mydrug": "P1_DRV1"})
    listed = tiny_trained.predict(["mydrug@1"], compound_targets={"mydrug": ["P1_DRV1"]})
    np.testing.assert_array_equal(one.X, listed.X)
    with pytest.raises(DataValidationError, match=r"compound_targets is 5 \(int\); expected a dict"):
        tiny_trained.predict(["mydrug@1"], compound_targets=5)
    with pytest.raises(DataValidationError, match=r"compound_targets\['mydrug'\] is 5 \(int\); expected a list"):
        tiny_trained.predict(["mydrug@1"], compound_targets={"mydrug": 5})


@pytest.mark.parametrize(("text", "message"), [
    ("", "is not a readable CSV table"),
    ("split,method,metric,mean,sd,n\nunseen,WorldModel,mse_top20,abc,,1\n", "non-numeric value.*'mean'.*'abc'"),
])
def test_a_damaged_evaluation_table_in_the_model_folder_is_a_clear_error(tiny_trained, tmp_path, text, message):
    """An empty evaluation.csv made WorldModel.load raise pandas' EmptyDataError; a non-number in it was loaded
    as text into wm.evaluation (what the model card and reports format as numbers)."""
    d = tiny_trained.save(tmp_path / "m")
    (d / "evaluation.csv").write_text(text)
    with pytest.raises(BioworldError, match=f"evaluation.csv .*{message}.*Fix: run 'bioworld evaluate' again"):
        bw.WorldModel.load(d)


def test_tools_refuse_what_is_not_a_model_and_bad_options(tiny_trained, small_sim, cells):
    """bw.eval.evaluate('model', ...) / bw.tl.latents(model=None) raised AttributeError; to_cell_eval(max_cells=-1)
    a numpy ValueError and max_cells=0 claimed the model could predict none of the perturbations."""
    for bad in ("model_dir", None):
        with pytest.raises(BioworldError, match=r"expected a trained bioworld.WorldModel or bioworld.Ensemble.*load"):
            bw.eval.evaluate(bad, small_sim.adata)
        with pytest.raises(BioworldError, match="expected a trained bioworld.WorldModel"):
            bw.tl.latents(cells.copy(), model=bad)
    for n in (0, -1, 2.5):
        with pytest.raises(BioworldError, match=rf"max_cells={n!r}; expected None .every cell. or a whole number"):
            bw.tl.to_cell_eval(tiny_trained, small_sim.adata, max_cells=n)
    with pytest.raises(BioworldError, match="key_added=5; expected a non-empty obsm key"):
        bw.tl.latents(cells.copy(), model=tiny_trained, key_added=5)


@pytest.mark.parametrize("levels", [(1.2,), (0.9, 0.0), ()])
def test_calibrate_refuses_bad_levels_before_training_any_fold(tiny_trained, small_sim, monkeypatch, levels):
    """levels=(1.2,) was refused only after every calibration fold had been trained (minutes on real data)."""
    def no_training(*args, **kwargs):
        raise AssertionError("a calibration fold was trained before the levels were checked")

    monkeypatch.setattr(bw.WorldModel, "train", no_training)
    ens = bw.Ensemble([tiny_trained, tiny_trained])
    with pytest.raises(BioworldError, match="level"):
        ens.calibrate(small_sim.adata, n_folds=2, levels=levels)


@pytest.mark.parametrize("seeds", ["42", [0, 0.5], [0, -1], [True, 2]])
def test_ensemble_seeds_must_be_whole_numbers(small_sim, seeds):
    """seeds='42' trained seeds 4 and 2; [0, 0.5] became [0, 0] (refused as a repeat); [True, 2] trained 1 and 2;
    [0, -1] trained member 0 before the config check refused -1."""
    with pytest.raises(BioworldError, match="expected a list of whole numbers >= 0"):
        bw.Ensemble.train(small_sim.adata, seeds=seeds, **_fresh(small_sim), progress=False)


def test_enrichment_gene_set_of_one_gene_given_as_a_string(tiny_trained):
    """{'one': 'P1_DRV1'} was read letter by letter ('P', '1', '_', ...): the set had no gene on the panel."""
    pred = tiny_trained.predict(["P1_DRV1"])
    genes = [str(g) for g in pred.var_names]
    table = bw.tl.enrichment(pred, "P1_DRV1", gene_sets={"one": genes[0], "many": genes[1:12]}, min_size=1,
                             permutations=20)
    assert dict(zip(table["term"], table["n_genes"])) == {"one": 1, "many": 11}


def test_prioritize_names_a_misspelt_option_and_the_valid_ones(tiny_trained, cells):
    """max_gene=5 surfaced as "prioritize_cells() got an unexpected keyword argument", an internal name."""
    with pytest.raises(TypeError, match=r"unknown option 'max_gene'; did you mean 'max_genes'\? it takes: genes, "):
        tiny_trained.prioritize(cells, "down:SIM_P1", max_gene=5)
    with pytest.raises(TypeError, match=r"unknown option 'colour'; it takes: "):
        tiny_trained.prioritize(cells, "down:SIM_P1", colour="red")


def test_counterfactual_keeps_the_cells_gene_annotations(tiny_trained, cells):
    """The answer's var held no column of the cells' var (gene ids, highly_variable, ... were lost)."""
    given = cells.copy()
    given.var["gene_id"] = [f"ENSG{i:05d}" for i in range(given.n_vars)]
    given.var["highly_variable"] = np.arange(given.n_vars) % 2 == 0
    cf = tiny_trained.counterfactual(given, ["P2_DRV1"])
    assert list(cf.var_names) == list(tiny_trained.var_names)
    pos = {g: i for i, g in enumerate(given.var_names)}
    rows = [pos[g] for g in cf.var_names]
    assert cf.var["gene_id"].tolist() == given.var["gene_id"].to_numpy()[rows].tolist()
    assert cf.var["highly_variable"].dtype == bool
    assert cf.var["highly_variable"].tolist() == given.var["highly_variable"].to_numpy()[rows].tolist()
    # the cells' genes in another order: the annotations follow the gene names, not the positions
    shuffled = given[:, given.var_names[::-1]].copy()
    cf_rev = tiny_trained.counterfactual(shuffled, ["P2_DRV1"])
    assert cf_rev.var["gene_id"].tolist() == cf.var["gene_id"].tolist()


def test_empty_cells_given_to_a_model_are_a_warning(tiny_trained, cells):
    """Cells with zero expression in every gene were answered without a word (training data now say so too):
    they are read as cells that express nothing."""
    import scipy.sparse as sp

    c = cells.copy()
    X = np.asarray(c.X.toarray() if sp.issparse(c.X) else c.X).copy()
    X[:2] = 0
    c.X = X
    with pytest.warns(UserWarning, match=r"2 of 12 cells have zero expression in every gene"):
        tiny_trained.counterfactual(c, ["P2_DRV1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_trained.counterfactual(cells, ["P2_DRV1"])  # none empty: no warning


def test_integer_coded_labels_with_an_integer_control_are_refused_with_the_string_to_pass(small_sim):
    """Perturbations coded as integers (guide ids) with control=0 crashed deep in register ('int' object has no
    attribute 'strip'); the labels are compared as text, so the fix is control='0'."""
    a = small_sim.adata.copy()
    codes = {lab: i for i, lab in enumerate(sorted(a.obs["perturbation"].astype(str).unique(), key=lambda s: s != "control"))}
    a.obs["perturbation"] = a.obs["perturbation"].astype(str).map(codes).astype(int)
    for call in (lambda: bw.data.register(a, perturbation_key="perturbation", control=0, inplace=False),
                 lambda: bw.WorldModel(a, perturbation_key="perturbation", control=0)):
        with pytest.raises(DataValidationError, match=r"control=0 \(int\); expected the control label as a string.*"
                                                      r"Fix: pass control='0'"):
            call()
    reg = bw.data.register(a, perturbation_key="perturbation", control="0", inplace=False)
    assert reg.control == "0"


def test_panel_error_with_only_missing_genes_does_not_list_an_empty_extra(tiny_trained, cells):
    """A subset of the model's genes said '... and 0 are extra (e.g. [])'."""
    with pytest.raises(DataValidationError) as e:
        tiny_trained.counterfactual(cells[:, 5:].copy(), ["P1_DRV1"])
    msg = str(e.value)
    assert "5 of the model's" in msg and "are extra" not in msg and "e.g. []" not in msg
