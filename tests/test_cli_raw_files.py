"""The CLI on raw files shaped unlike the bundled data, as a new user brings them: gene ids in
``var_names`` with the symbols in a ``var`` column (``--gene-symbols-key``), a non-default control
label in another ``obs`` column. Found by a new-user audit of the installed wheel."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from test_cli import GENES, _small_adata, _write, assert_one_line_error, invoke

#: small batches and one thread keep CLI training fast on a busy 2-core machine
FAST = {"groups_per_batch": 4, "cells_per_group": 4, "self_pairs": 4, "num_threads": 1}
IDS = [f"ENSG{i:011d}" for i in range(len(GENES))]


def _ids_screen() -> ad.AnnData:
    """The small screen with Ensembl-style ids as var_names, symbols in var['symbol'], controls 'NT' in obs['guide']."""
    a = _small_adata()
    a.obs["guide"] = a.obs["perturbation"].replace({"control": "NT"}).astype(str)
    a.obs = a.obs.drop(columns=["perturbation"])
    a.var = pd.DataFrame({"symbol": list(GENES)}, index=IDS)
    return a


@pytest.fixture(scope="module")
def ids_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("ids")
    _write(_ids_screen(), d / "screen.h5ad")
    (d / "config.json").write_text(json.dumps(FAST))
    result = invoke("train", d / "screen.h5ad", "--out", d / "model", "--perturbation-key", "guide", "--control", "NT",
                    "--gene-symbols-key", "symbol", "--config", d / "config.json", "--max-steps", 3, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    return d


def test_evaluate_reads_the_genes_of_a_model_trained_with_gene_symbols_key(ids_model, tmp_path):
    """The model keeps the file's ids as var_names: evaluate on the training file's layout (ids + symbol
    column) and on a file keyed by symbol both find every gene (both were 'lack 16 of 16 genes')."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(ids_model / "model", model)
    same = invoke("evaluate", model, "--data", ids_model / "screen.h5ad")
    assert same.exit_code == 0, (same.output, same.exception)
    assert "scored 2 perturbation(s) on 18 test cells" in same.stdout
    first = pd.read_csv(model / "evaluation.csv")

    by_symbol = _ids_screen()
    by_symbol.var = pd.DataFrame(index=list(GENES))
    by_symbol = by_symbol[:, list(GENES)[::-1]].copy()  # another gene order too
    path = _write(by_symbol, tmp_path / "by_symbol.h5ad")
    other = invoke("evaluate", model, "--data", path)
    assert other.exit_code == 0, (other.output, other.exception)
    pd.testing.assert_frame_equal(pd.read_csv(model / "evaluation.csv"), first)  # the same genes, read by name


def test_answers_carry_the_symbols_of_a_model_trained_with_gene_symbols_key(ids_model, tmp_path):
    """predict / counterfactual keep the file's ids as var_names and add var['bw_gene_symbol'] (was: ids only)."""
    model = ids_model / "model"
    result = invoke("predict", model, "--perturbations", "NT,STAT1,JAK2", "--out", tmp_path / "pred.h5ad")
    assert result.exit_code == 0, (result.output, result.exception)
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert list(pred.var_names) == IDS
    assert list(pred.var["bw_gene_symbol"]) == list(GENES)

    result = invoke("counterfactual", model, "--cells", ids_model / "screen.h5ad", "--intervention", "STAT1",
                    "--out", tmp_path / "cf.h5ad")
    assert result.exit_code == 0, (result.output, result.exception)
    cf = ad.read_h5ad(tmp_path / "cf.h5ad")
    assert list(cf.var_names) == IDS and list(cf.var["bw_gene_symbol"]) == list(GENES)


def test_cells_keyed_by_symbol_are_read_by_a_model_trained_on_ids(ids_model, tmp_path):
    """Cells with the symbols as var_names (scanpy's usual layout) get the same counterfactual as cells keyed by
    the training file's ids (they were refused: '16 of the model's 16 genes are missing')."""
    model = ids_model / "model"
    by_symbol = _ids_screen()
    by_symbol.var = pd.DataFrame(index=list(GENES))
    by_symbol = by_symbol[:, list(GENES)[::-1]].copy()
    _write(by_symbol, tmp_path / "cells.h5ad")
    outs = {}
    for name, cells in (("ids", ids_model / "screen.h5ad"), ("symbols", tmp_path / "cells.h5ad")):
        result = invoke("counterfactual", model, "--cells", cells, "--intervention", "IRF1", "--out",
                        tmp_path / f"cf_{name}.h5ad")
        assert result.exit_code == 0, (result.output, result.exception)
        outs[name] = ad.read_h5ad(tmp_path / f"cf_{name}.h5ad")
    assert list(outs["symbols"].var_names) == IDS
    np.testing.assert_array_equal(np.asarray(outs["symbols"].X), np.asarray(outs["ids"].X))


def test_answers_of_a_symbol_keyed_model_have_no_extra_var_column(tmp_path):
    from bioworld.query._anndata import GENE_SYMBOL, gene_var

    assert GENE_SYMBOL not in gene_var(GENES, GENES).columns
    assert list(gene_var(IDS, GENES)[GENE_SYMBOL]) == list(GENES)
    assert np.array_equal(gene_var(IDS).index, IDS)


# ------------------------------------------------------------- another species' symbols, own gene sets
MOUSE = [g.capitalize() for g in GENES]  # Stat1, Irf1, ...: names the bundled (human) gene sets do not hold


@pytest.fixture(scope="module")
def mouse(tmp_path_factory):
    """A mouse-style screen (symbols Stat1, ...; controls 'NT' in obs['guide']) trained with its own GMT."""
    d = tmp_path_factory.mktemp("mouse")
    a = _small_adata()
    a.obs["guide"] = a.obs["perturbation"].replace({"control": "NT", "STAT1": "Stat1", "IRF1": "Irf1"}).astype(str)
    a.obs = a.obs.drop(columns=["perturbation"])
    a.var_names = MOUSE
    _write(a, d / "screen.h5ad")
    (d / "mouse.gmt").write_text("MM_IFNG\tdesc\t" + "\t".join(MOUSE[:8]) + "\nMM_ISG\tdesc\t" + "\t".join(MOUSE[6:]) + "\n")
    (d / "config.json").write_text(json.dumps(FAST))
    result = invoke("train", d / "screen.h5ad", "--out", d / "model", "--perturbation-key", "guide", "--control", "NT",
                    "--entities", d / "mouse.gmt", "--config", d / "config.json", "--max-steps", 3, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    return d


def _prioritize(d, out, *flags):
    result = invoke("prioritize", d / "model", "--cells", d / "screen.h5ad", "--goal", "down:MM_IFNG", "--out", out,
                    "--max-genes", 20, *flags)
    assert result.exit_code == 0, (result.output, result.exception)
    return result, pd.read_csv(out / "ranked_interventions.csv")


def test_prioritize_pairs_flag_on_a_raw_mouse_screen(mouse, tmp_path):
    """--pairs (the default) scores pairs of interventions, --no-pairs none; the singles are the same rows."""
    _, default = _prioritize(mouse, tmp_path / "default")
    _, pairs = _prioritize(mouse, tmp_path / "pairs", "--pairs")
    _, single = _prioritize(mouse, tmp_path / "single", "--no-pairs")
    assert (pairs["kind"] == "pair").sum() > 0 and "pair" not in set(single["kind"])
    pd.testing.assert_frame_equal(default, pairs)
    singles = pairs[pairs["kind"] != "pair"]
    assert sorted(singles["intervention"]) == sorted(single["intervention"])


def test_prioritize_namespace_warning_names_the_commands_flag(mouse, tmp_path):
    """On a panel the bundled gene sets do not name, the warning's fix names prioritize's --genes (it named
    --candidates, design's flag, beside a Python keyword)."""
    result, table = _prioritize(mouse, tmp_path / "rep", "--no-pairs")
    lines = [line for line in result.stderr.splitlines() if "bundled gene sets name" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: "), result.stderr
    assert "prioritize --genes A,B" in lines[0] and "(genes= / --candidates)" not in lines[0]
    assert set(table.loc[table["kind"] == "gene", "intervention"]) <= set(MOUSE)
    # no bundled compound is scored as the loss of its human targets on this panel, and the output says why
    assert "compound" not in set(table["kind"])
    assert "another species' symbols" in result.stdout and "compounds not scored" in result.stdout


# ------------------------------------------------------------------- Ensembl ids only: --id-map
def _ensembl_screen(ids: list[str]) -> ad.AnnData:
    a = _small_adata()
    a.var_names = ids
    return a


def test_id_map_auto_and_table_from_the_cli(tmp_path):
    """A file with Ensembl ids and no symbol column: the error's fix names --id-map (it named the Python-only
    id_map='auto'); --id-map auto maps human ids, --id-map TABLE another organism's; evaluate reads the model's
    own file back (it refused it: 'var_names look like Ensembl ids')."""
    from bioworld.data._register import _ensembl_map
    from test_cli_hints import _check_hint

    to_id = {g: i for i, g in _ensembl_map("auto").items()}
    human = _write(_ensembl_screen([to_id[g] for g in GENES]), tmp_path / "human.h5ad")
    line = assert_one_line_error(invoke("inspect", human), "Ensembl ids", "--id-map auto")
    _check_hint("inspect", line)
    ok = invoke("inspect", human, "--id-map", "auto")
    assert ok.exit_code == 0 and "mapped 16/16 Ensembl ids to symbols" in ok.stdout, ok.output

    (tmp_path / "config.json").write_text(json.dumps(FAST))
    mouse_ids = [f"ENSMUSG{i:011d}" for i in range(len(GENES))]
    mouse = _write(_ensembl_screen(mouse_ids), tmp_path / "mouse.h5ad")
    (tmp_path / "ids.tsv").write_text("gene_id\tsymbol\n" + "".join(f"{i}\t{g}\n" for i, g in zip(mouse_ids, GENES)))
    for path, flag in ((human, "auto"), (mouse, str(tmp_path / "ids.tsv"))):
        model = tmp_path / f"model_{path.stem}"
        result = invoke("train", path, "--out", model, "--id-map", flag, "--config", tmp_path / "config.json",
                        "--max-steps", 2, "--quiet")
        assert result.exit_code == 0, (result.output, result.exception)
        assert json.loads((model / "bioworld.json").read_text())["genes"] == list(GENES)
        result = invoke("evaluate", model, "--data", path)
        assert result.exit_code == 0, (result.output, result.exception)
        result = invoke("predict", model, "--perturbations", "STAT1", "--out", tmp_path / f"pred_{path.stem}.h5ad")
        assert result.exit_code == 0, (result.output, result.exception)
        assert list(ad.read_h5ad(tmp_path / f"pred_{path.stem}.h5ad").var["bw_gene_symbol"]) == list(GENES)
    bad = invoke("inspect", mouse, "--id-map", tmp_path / "missing.tsv")
    assert_one_line_error(bad, "--id-map", "missing.tsv", "id, symbol")


def test_holdout_in_another_case_is_refused_with_the_label_as_written(tmp_path):
    """--holdout stat1 on a screen labelled STAT1: the error says which label was meant and how to fix it (it
    listed three labels, no fix)."""
    from test_cli_hints import _check_hint

    data = _write(_small_adata(), tmp_path / "d.h5ad")
    line = assert_one_line_error(invoke("train", data, "--out", tmp_path / "m", "--holdout", "stat1,IRF", "--max-steps", 1),
                                 "'stat1': did you mean 'STAT1'?", "'IRF': did you mean 'IRF1'?", "--holdout A,B")
    _check_hint("train", line)
    assert not (tmp_path / "m" / "bioworld.json").exists()


def test_entities_table_without_weights_gets_a_cli_fix(tmp_path):
    """--entities with a gene/pathway table and no weight column: the fix says what to write (it named the Python
    keywords gene_col= / set_col= / weight_col=, which no CLI flag sets)."""
    from test_cli_hints import _check_hint

    data = _write(_small_adata(), tmp_path / "d.h5ad")
    (tmp_path / "sets.tsv").write_text("pathway\tgene\n" + "".join(f"IFN\t{g}\n" for g in GENES[:5]))
    line = assert_one_line_error(invoke("inspect", data, "--entities", tmp_path / "sets.tsv"),
                                 "missing ['weight']", "add a weight column of 1s", "GMT")
    _check_hint("inspect", line)
    (tmp_path / "sets.tsv").write_text("pathway\tgene\tweight\n" + "".join(f"IFN\t{g}\t1\n" for g in GENES[:5]))
    ok = invoke("inspect", data, "--entities", tmp_path / "sets.tsv")
    assert ok.exit_code == 0 and "sets: 1/1 kept" in ok.stdout, ok.output


def test_probe_ids_with_a_symbol_column_name_that_column(tmp_path):
    """Probe ids as var_names (a raw L1000 plate) and the symbols in a var column: inspect and train say which
    column to pass (they only said 'a var column of symbols: --gene-symbols-key COLUMN')."""
    a = _small_adata()
    a.var = pd.DataFrame({"probe_type": ["at"] * len(GENES), "pr_gene_symbol": list(GENES)},
                         index=[f"{2000 + i}_at" for i in range(len(GENES))])
    data = _write(a, tmp_path / "probes.h5ad")
    for cmd in (["inspect", data], ["train", data, "--out", tmp_path / "m", "--max-steps", 1]):
        assert_one_line_error(invoke(*cmd), "Found no entity", "Fix: pass --gene-symbols-key pr_gene_symbol",
                              "16 of 16 genes")
    ok = invoke("inspect", data, "--gene-symbols-key", "pr_gene_symbol")
    assert ok.exit_code == 0, ok.output


def _warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning: ")]


def test_flags_given_but_not_used_are_said(mouse, tmp_path):
    """--level on a single model, --max-genes beside --genes / --candidates and --dose on a model of gene
    perturbations were accepted and silently ignored; each now gets a warning line, and only when given."""
    model, cells = mouse / "model", mouse / "screen.h5ad"
    r = invoke("predict", model, "--perturbations", "Stat1", "--level", 0.5, "--out", tmp_path / "p.h5ad")
    assert r.exit_code == 0 and any(w.startswith("warning: --level is not used") for w in _warnings(r)), r.output
    r = invoke("predict", model, "--perturbations", "Stat1", "--out", tmp_path / "q.h5ad")
    assert r.exit_code == 0 and not any("--level" in w for w in _warnings(r)), r.output
    r = invoke("counterfactual", model, "--cells", cells, "--intervention", "Irf1", "--level", 0.8,
               "--out", tmp_path / "cf.h5ad")
    assert r.exit_code == 0 and any(w.startswith("warning: --level is not used") for w in _warnings(r)), r.output

    r = invoke("prioritize", model, "--cells", cells, "--goal", "down:MM_IFNG", "--genes", "Stat1,Irf1",
               "--max-genes", 5, "--dose", 3, "--no-pairs", "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    said = " ".join(_warnings(r))
    assert "--max-genes is not used: --genes names the gene candidates" in said
    assert "--dose is not used: this model learned gene perturbations only" in said
    r = invoke("prioritize", model, "--cells", cells, "--goal", "down:MM_IFNG", "--genes", "Stat1,Irf1", "--no-pairs",
               "--out", tmp_path / "rep2")
    assert r.exit_code == 0 and "is not used" not in r.stderr, r.output

    (tmp_path / "cands.txt").write_text("Jak2\nSocs1\n")
    r = invoke("design", model, "--budget", 1, "--candidates", tmp_path / "cands.txt", "--max-genes", 3,
               "--out", tmp_path / "next")
    assert r.exit_code == 0, r.output
    assert any(w.startswith("warning: --max-genes is not used: --candidates lists") for w in _warnings(r)), r.output


def test_a_perturbation_set_aside_for_its_size_says_so_when_asked_for(tmp_path):
    """A 2-cell perturbation no gene set names is set aside at training; asking for it later said only 'in no
    entity ... check the symbol'. Now it says the data had it, why it was set aside, and --min-cells."""
    a = _small_adata()
    labels = a.obs["perturbation"].astype(str).to_numpy().copy()
    labels[[6, 7]] = "TINYKO1"  # two of the STAT1 cells
    a.obs["perturbation"] = labels
    data = _write(a, tmp_path / "d.h5ad")
    (tmp_path / "config.json").write_text(json.dumps(FAST))
    result = invoke("train", data, "--out", tmp_path / "m", "--config", tmp_path / "config.json", "--max-steps", 2,
                    "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    for cmd in (["predict", tmp_path / "m", "--perturbations", "TINYKO1", "--out", tmp_path / "p.h5ad"],
                ["counterfactual", tmp_path / "m", "--cells", data, "--intervention", "STAT1+TINYKO1",
                 "--out", tmp_path / "c.h5ad"]):
        assert_one_line_error(invoke(*cmd), "'TINYKO1' is a perturbation of the training data, set aside at training",
                              "2 cells < --min-cells 3", "Fix: train with a lower --min-cells")
    other = assert_one_line_error(invoke("predict", tmp_path / "m", "--perturbations", "NOPEKO9", "--out",
                                         tmp_path / "p.h5ad"), "'NOPEKO9'")
    assert "set aside" not in other


def test_compound_by_structure_on_a_genetic_model_names_the_cli_flag(mouse, tmp_path):
    """The fix of a refused --compound on a model of gene perturbations showed the Python dict literal
    'compound_targets={name: [genes]}' beside the flag; the CLI line names only --compound-targets."""
    from test_cli_hints import _check_hint

    line = assert_one_line_error(invoke("predict", mouse / "model", "--perturbations", "foo@1", "--compound",
                                        "foo=CCO", "--out", tmp_path / "p.h5ad"), "--compound-targets TABLE")
    assert "compound_targets=" not in line
    _check_hint("predict", line)


def test_inspect_hints_guide_level_labels(tmp_path):
    """Labels per guide (STAT1_g1, IRF1-sg2), common in raw CRISPR screens, were only listed as unknown targets
    'learned from their own cells only'; inspect now says they look like guides of a known gene."""
    a = _small_adata()
    a.obs["perturbation"] = a.obs["perturbation"].replace({"STAT1": "STAT1_g1", "IRF1": "IRF1-sg2"}).astype(str)
    result = invoke("inspect", _write(a, tmp_path / "guides.h5ad"))
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("knowledge: "))
    assert "0 of 2 genetic targets" in line and "look like guides of a known gene" in line, line
    assert "label the cells by their target gene" in line and "combination" not in line


def test_inspect_and_train_with_a_symbols_column_sharing_and_missing_symbols(tmp_path):
    """--gene-symbols-key on a column where two ids share a symbol and one has none (common in 10x files) was
    refused, with a hint (var_names_make_unique) that does nothing for a var column; now both are findings and
    the model trains, its answers keeping the ids with the suffixed symbols."""
    a = _ids_screen()
    symbols = list(GENES)
    symbols[3], symbols[5] = "STAT1", None
    a.var["symbol"] = symbols
    path = _write(a, tmp_path / "screen.h5ad")
    (tmp_path / "config.json").write_text(json.dumps(FAST))
    keys = ("--perturbation-key", "guide", "--control", "NT", "--gene-symbols-key", "symbol")
    result = invoke("inspect", path, *keys)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "1 symbol(s) shared by several genes (e.g. 'STAT1')" in result.stdout
    assert "1 gene(s) without a symbol keep their var_name" in result.stdout
    result = invoke("train", path, "--out", tmp_path / "model", *keys, "--config", tmp_path / "config.json",
                    "--max-steps", 3, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    result = invoke("predict", tmp_path / "model", "--perturbations", "NT,STAT1", "--out", tmp_path / "pred.h5ad")
    assert result.exit_code == 0, (result.output, result.exception)
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert list(pred.var_names) == IDS
    assert list(pred.var["bw_gene_symbol"])[3:6] == ["STAT1-1", GENES[4], IDS[5]]


def test_same_seed_gives_byte_identical_answer_files(tmp_path):
    """Two trainings with the same data and --seed gave the same weights but different predict / counterfactual
    files: the answers carried the training wall time (uns['bioworld']['model']['train_wall_s'])."""
    path = _write(_ids_screen(), tmp_path / "screen.h5ad")
    (tmp_path / "config.json").write_text(json.dumps(FAST))
    files = []
    for run in ("a", "b"):
        result = invoke("train", path, "--out", tmp_path / run, "--perturbation-key", "guide", "--control", "NT",
                        "--gene-symbols-key", "symbol", "--config", tmp_path / "config.json", "--max-steps", 3,
                        "--seed", 5, "--quiet")
        assert result.exit_code == 0, (result.output, result.exception)
        pred, cf = tmp_path / f"pred_{run}.h5ad", tmp_path / f"cf_{run}.h5ad"
        assert invoke("predict", tmp_path / run, "--perturbations", "NT,STAT1,JAK2", "--out", pred).exit_code == 0
        assert invoke("counterfactual", tmp_path / run, "--cells", path, "--intervention", "STAT1",
                      "--out", cf).exit_code == 0
        files.append((pred.read_bytes(), cf.read_bytes()))
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert files[0][0] == files[1][0] and files[0][1] == files[1][1]
    # the wall time differs between runs (the bytes above matched only when it rounded alike): not in answers
    for name in ("pred_a.h5ad", "cf_a.h5ad"):
        assert "train_wall_s" not in ad.read_h5ad(tmp_path / name).uns["bioworld"]["model"]


def test_predict_an_unknown_guide_names_the_trained_guides_and_the_gene(tmp_path):
    """A model trained on guide-level labels (STAT1_sg1, STAT1_sg2) asked for 'STAT1_sg3' said 'close matches: none'
    (only the knowledge's genes were searched, not the training labels) and had no 'Fix:'."""
    a = _small_adata()
    a.obs["perturbation"] = ["control"] * 6 + ["STAT1_sg1"] * 3 + ["STAT1_sg2"] * 3 + ["IRF1"] * 6
    path = _write(a, tmp_path / "guides.h5ad")
    (tmp_path / "config.json").write_text(json.dumps(FAST))
    result = invoke("train", path, "--out", tmp_path / "model", "--config", tmp_path / "config.json",
                    "--max-steps", 3, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    result = invoke("predict", tmp_path / "model", "--perturbations", "control,STAT1_sg3", "--out", tmp_path / "p.h5ad")
    line = assert_one_line_error(result, "'STAT1_sg3'", "'STAT1_sg1'", "'STAT1_sg2'", "looks like a guide of 'STAT1'",
                                 "ask for 'STAT1'", "Fix:")
    assert "close matches: none" not in line
    for text in ("STAT1;IRF1", "STAT1_IRF1"):  # a combination written with another separator: the '+' form named
        result = invoke("predict", tmp_path / "model", "--perturbations", text, "--out", tmp_path / "p.h5ad")
        assert_one_line_error(result, f"{text!r} looks like a combination: write it 'STAT1+IRF1'")


def test_labels_given_twice_hint_names_the_option(ids_model, tmp_path):
    """predict / counterfactual with a label given twice hinted Python (list(dict.fromkeys(labels)),
    adata.obs[key].unique()) on the command line."""
    line = assert_one_line_error(invoke("predict", ids_model / "model", "--perturbations", "NT,STAT1,STAT1",
                                        "--out", tmp_path / "p.h5ad"), "['STAT1'] given more than once",
                                 "Fix: pass each once: --perturbations with each label once")
    assert "dict.fromkeys" not in line and "adata" not in line
    line = assert_one_line_error(invoke("counterfactual", ids_model / "model", "--cells", ids_model / "screen.h5ad",
                                        "--intervention", "STAT1", "--intervention", "STAT1",
                                        "--out", tmp_path / "c.h5ad"), "--intervention with each label once")
    assert "dict.fromkeys" not in line


def test_silence_of_an_entity_in_another_case_names_it_with_a_fix(ids_model, tmp_path):
    """'silence:jak-stat' had close matches but no 'Fix:' saying what to write."""
    result = invoke("counterfactual", ids_model / "model", "--cells", ids_model / "screen.h5ad",
                    "--intervention", "silence:jak-stat", "--out", tmp_path / "c.h5ad")
    assert_one_line_error(result, "cannot silence 'jak-stat'", "['JAK-STAT']", "Fix: silence one of them, e.g. "
                          "silence:JAK-STAT")
