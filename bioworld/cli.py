"""``bioworld`` command line: thin wrappers over the Python API.

Every command is a small function; the shared error handling lives in :func:`_command`. A
:class:`~bioworld.errors.BioworldError` (and a missing/unreadable file) is printed as one line
``error: <message>`` on stderr with exit status 2 and no traceback; ``--debug`` (or the environment
variable ``BIOWORLD_DEBUG=1``) shows the traceback instead.

Commands: ``inspect``, ``simulate``, ``train``, ``predict``. ``counterfactual``, ``prioritize``,
``demo`` and ``benchmark`` are added next to them (same pattern: ``@app.command()`` +
``@_command``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Any, Callable, List, Optional, TypeVar

import typer

from bioworld.errors import BioworldError, CheckpointError, DataValidationError

__all__ = ["app", "main"]

#: SMILES table used for compound data when ``--compound-id-key`` is given without ``--smiles``.
DEFAULT_SMILES = "compounds/lincs_drugs_smiles.csv"
#: Keywords of :func:`bioworld.data.register` a loader may suggest (``uns['bioworld']['loader']``).
_REGISTER_KEYS = ("perturbation_key", "control", "dose_key", "compound_id_key", "gene_symbols_key",
                  "input", "replicate_key", "min_cells_per_group")
_REGISTER_DEFAULTS = {"perturbation_key": "perturbation", "control": "control", "input": "counts"}
_MODEL_META = "bioworld.json"  # = bioworld.train.checkpoint.META (not imported: keeps startup fast)

app = typer.Typer(
    name="bioworld",
    help="bioworld: a single-cell perturbation world model (entities, actions, JEPA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])


# ------------------------------------------------------------------------------- error handling
#: ``--debug`` of the current invocation (set by the root callback; None outside the app).
_SESSION: dict[str, Optional[bool]] = {"debug": None}


def _debug_enabled() -> bool:
    if _SESSION["debug"] is not None:
        return bool(_SESSION["debug"])
    return os.environ.get("BIOWORLD_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def _one_line(message: str) -> str:
    return re.sub(r"\s*\n\s*", " ", str(message)).strip()


#: Python keyword arguments named in error hints -> the CLI flag that sets them.
_CLI_FLAGS = {
    "perturbation_key": "--perturbation-key", "control": "--control", "dose_key": "--dose-key",
    "compound_id_key": "--compound-id-key", "gene_symbols_key": "--gene-symbols-key", "input": "--input",
    "replicate_key": "--replicate-key", "min_cells_per_group": "--min-cells", "smiles": "--smiles",
    "holdout": "--holdout", "seed": "--seed", "max_steps": "--max-steps", "device": "--device",
    "overwrite": "--overwrite", "entities": "--entities", "level": "--level",
}


def cli_hint(message: str) -> str:
    """An error message with the Python arguments in its hints named as the CLI flags that set them.

    ``pass control=<label>`` -> ``pass --control <label>``; ``input='log'`` -> ``--input log``;
    ``overwrite=True`` -> ``--overwrite``; ``lower min_cells_per_group`` -> ``lower --min-cells``;
    ``X (CLI: Y)`` -> ``Y``.
    """
    # the Python value may be a dict / list literal with spaces: compound_targets={name: [genes]} (CLI: ...)
    text = re.sub(r"[A-Za-z_][\w.]*=(?:\{[^{}]*\}|\[[^\[\]]*\]|\S+) \(CLI: ([^)]+)\)", r"\1", str(message))
    for key, flag in _CLI_FLAGS.items():
        text = re.sub(rf"(?<![\w.\-\[']){key}=True\b", flag, text)
        text = re.sub(rf"(?<![\w.\-\[']){key}=(['\"])(.*?)\1", rf"{flag} \2", text)
        text = re.sub(rf"(?<![\w.\-\[']){key}=", f"{flag} ", text)
    return re.sub(r"(?<![\w.\-\['])min_cells_per_group\b", "--min-cells", text)


def _user_error(exc: BaseException) -> str | None:
    """The one-line message for an error a user caused, or None for a bug (shown with traceback)."""
    if isinstance(exc, BioworldError):
        return _one_line(cli_hint(str(exc)))
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        name = exc.filename if getattr(exc, "filename", None) else ""
        what = exc.strerror or type(exc).__name__
        return _one_line(f"{what}: {name}; expected an existing, readable path. Fix: check the path "
                         f"(current folder: {Path.cwd()}).")
    return None


def _command(fn: F) -> F:
    """Shared wrapper of every command: one-line errors (exit 2) and warnings as ``warning:`` lines.

    Warnings raised while the command runs are collected; on success each is printed as one line
    ``warning: <message>`` on stderr, on a user error only the ``error:`` line is printed (with
    ``--debug`` the warnings and the full traceback are shown).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = _debug_enabled()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                result = fn(*args, **kwargs)
            except (typer.Exit, typer.Abort):
                raise
            except Exception as exc:  # noqa: BLE001 - classified below; bugs are re-raised
                message = _user_error(exc)
                if debug or message is None:
                    _print_warnings(caught)
                    raise
                typer.echo(f"error: {message}", err=True)
                raise typer.Exit(code=2) from None
        _print_warnings(caught)
        return result

    return wrapper  # type: ignore[return-value]


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    seen: set[str] = set()
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            continue
        text = _one_line(cli_hint(str(w.message)))
        if text not in seen:
            seen.add(text)
            typer.echo(f"warning: {text}", err=True)


def _show_version(value: bool) -> None:
    if value:
        import bioworld

        typer.echo(f"bioworld {bioworld.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option(
        "--debug", envvar="BIOWORLD_DEBUG",
        help="Show full tracebacks instead of one-line errors (also: BIOWORLD_DEBUG=1).")] = False,
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_show_version, is_eager=True, help="Print the bioworld version and exit.")] = None,
) -> None:
    """bioworld: entity-slot, action-conditioned JEPA world model for perturbation screens."""
    _SESSION["debug"] = debug


# ------------------------------------------------------------------------------------- helpers
IdMapOption = Annotated[Optional[str], typer.Option(
    "--id-map", metavar="auto|TABLE",
    help="Map Ensembl ids in var_names to symbols: 'auto' (the bundled human org.Hs.eg.db table) or a CSV/TSV "
         "whose first two columns are id, symbol (another organism).")]
LayerOption = Annotated[Optional[str], typer.Option(
    "--layer", metavar="NAME",
    help="Read the expression from the file's layers[NAME] instead of X (e.g. 'counts' when X holds normalised "
         "values and the raw counts are in a layer; 'raw': the file's .raw, where scanpy keeps them).")]


def _load_data(data: str, backed: bool = False, layer: str | None = None) -> tuple[Any, str]:
    """``DATA`` -> (AnnData, description). ``papalexi`` / ``l1000`` are the bundled datasets.

    ``backed``: open an .h5ad file with X left on disk (out-of-core training). ``layer``: X := that layer.
    """
    from bioworld import data as bwdata

    if backed and layer is not None:
        raise BioworldError(f"--backed reads X from disk in blocks and cannot read layers[{layer!r}] instead; expected "
                            "one of the two. Fix: drop --layer (or --backed), or save a copy of the file with "
                            f"layer {layer!r} as its X and train --backed on that copy.")
    if backed and data not in ("papalexi", "l1000"):
        return bwdata.open_backed(data), f"{data} (backed: X read from disk in blocks)"

    if data == "papalexi":
        adata, source = bwdata.load_papalexi(), "bundled Papalexi 2021 (perturbseq/papalexi2021_thp1_ko.h5ad)"
    elif data == "l1000":
        adata, source = bwdata.load_l1000(), "bundled LINCS L1000 A375 (compounds/l1000_a375_lincs_dose_response.h5ad)"
    else:
        adata, source = bwdata.read_h5ad(data), str(data)
    if layer is not None:
        adata = bwdata.use_layer(adata, layer, source=source)
    if layer is None:
        return adata, source
    from_raw = layer == "raw" and "raw" not in adata.layers  # use_layer read adata.raw
    return adata, source + (" (X = .raw)" if from_raw else f" (X = layers[{layer!r}])")


def _suggested_kwargs(adata: Any) -> dict[str, Any]:
    """Register keywords a loader stored in ``uns['bioworld']['loader']['register_kwargs']``."""
    bw = adata.uns.get("bioworld") if hasattr(adata, "uns") else None
    loader = bw.get("loader") if hasattr(bw, "get") else None
    stored = loader.get("register_kwargs") if hasattr(loader, "get") else None
    if not hasattr(stored, "items"):
        return {}
    out: dict[str, Any] = {}
    for key, value in stored.items():
        if key not in _REGISTER_KEYS or value is None:
            continue
        if key == "min_cells_per_group":
            number = value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise DataValidationError(
                    f"uns['bioworld']['loader']['register_kwargs']['min_cells_per_group'] is {value!r:.40} "
                    f"({type(value).__name__}); expected a positive integer (the smallest group kept). "
                    "Fix: correct or delete that entry in the file."
                )
            out[key] = int(number)
        elif key in _COLUMN_KEYS and str(value) not in _columns(adata, _COLUMN_KEYS[key]):
            # a file subset or re-exported without that column: the suggestion no longer applies
            where = _COLUMN_KEYS[key]
            warnings.warn(f"the file's uns['bioworld'] suggests {key} {str(value)!r}, but {where} has no such column; "
                          f"going without it. Fix: pass {_CLI_FLAGS[key]} COLUMN to use another column.", stacklevel=2)
        else:
            out[key] = str(value)
    return out


_COLUMN_KEYS = {"perturbation_key": "obs", "dose_key": "obs", "compound_id_key": "obs", "replicate_key": "obs",
                "gene_symbols_key": "var"}


def _columns(adata: Any, where: str) -> set[str]:
    frame = getattr(adata, where, None)
    return {str(c) for c in getattr(frame, "columns", [])}


def _register_kwargs(adata: Any, given: dict[str, Any]) -> dict[str, Any]:
    """Options given on the command line > the loader's suggestions > register's defaults."""
    merged = {**_REGISTER_DEFAULTS, **_suggested_kwargs(adata)}
    merged.update({k: v for k, v in given.items() if v is not None})
    return merged


def _compound_actions(adata: Any, kwargs: dict[str, Any]) -> tuple[dict[str, Any], Optional[str]]:
    """With ``--dose-key``: compound name + dose -> ``NAME@DOSE`` actions in ``obs['bw_perturbation']``.

    Labels that already hold compound actions (any ``@`` among them, as the bundled ``l1000``
    loader writes) are used as they are. Returns the register keywords (reading the new column) and
    a line for the summary, or None when nothing was converted.
    """
    dose_key = kwargs.get("dose_key")
    key = kwargs.get("perturbation_key", "perturbation")
    if not dose_key or key not in adata.obs.columns:
        return kwargs, None  # register() reports the missing column
    control = kwargs.get("control", "control")
    from bioworld.data import compound_labels, has_bare_names

    if not has_bare_names(adata, key, control):
        return kwargs, None

    new_key = compound_labels(adata, name_key=key, dose_key=dose_key, control=control)
    n = adata.obs[new_key].astype(str).nunique() - 1
    note = (f"compound actions: obs[{key!r}] + obs[{dose_key!r}] -> {n} NAME@DOSE labels in obs[{new_key!r}] "
            f"(e.g. {sorted(set(adata.obs[new_key].astype(str)) - {control})[:1][0] if n else 'none'})")
    return {**kwargs, "perturbation_key": new_key}, note


def _check_input(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in ("counts", "log"):
        raise DataValidationError(
            f"--input {value!r}; expected 'counts' (raw UMI counts) or 'log' (log-normalised). "
            "Fix: pass --input counts or --input log."
        )
    return value


def _id_map(value: Optional[str]) -> Any:
    """``--id-map``: None, ``'auto'`` or ``{id: symbol}`` from a CSV/TSV (first two columns, a header row)."""
    if value is None or value == "auto":
        return value
    path = Path(value)
    if not path.is_file():
        raise DataValidationError(f"--id-map {value!r} is neither 'auto' nor an existing file; expected 'auto' or a "
                                  "CSV/TSV with columns id, symbol. Fix: check the path.")
    import pandas as pd

    table = pd.read_csv(path, sep="," if path.suffix.lower() == ".csv" else "\t", dtype=str)
    if table.shape[1] < 2 or table.iloc[:, :2].isna().any().any():
        raise DataValidationError(f"--id-map {value!r} has {table.shape[1]} column(s) or empty cells in the first "
                                  "two; expected a header row and columns id, symbol filled on every row. Fix: write "
                                  "the table as 'id<TAB>symbol' lines (comma-separated for a .csv file).")
    return dict(zip(table.iloc[:, 0].str.strip(), table.iloc[:, 1].str.strip()))


def _entity_set(paths: Optional[List[Path]]) -> tuple[Any, str]:
    """Entity files (GMT / weight tables, combined) or the bundled defaults; same reader as training."""
    from bioworld.entities import resolve_entities

    if not paths:
        return resolve_entities(None), "default: MSigDB Hallmark + PROGENy"
    return resolve_entities([str(p) for p in paths]), ", ".join(str(p) for p in paths)


@contextlib.contextmanager
def _symbols_column_hint(adata: Any, entities: Optional[List[Path]], symbols_key: Optional[str]) -> Any:
    """When no entity covers the panel and no --gene-symbols-key was given, the error's fix names a ``var``
    column holding symbols the entities name (e.g. ``pr_gene_symbol`` beside probe ids)."""
    from bioworld.errors import EntityError

    try:
        yield
    except EntityError as exc:
        if symbols_key is not None or not str(exc).startswith("Found no entity"):
            raise
        known = set(_entity_set(entities)[0].genes())
        found = []
        for col in adata.var.columns:
            values = adata.var[col]
            if values.dtype.kind in "OUS" or str(values.dtype) in ("category", "string"):
                found.append((int(values.astype(str).isin(known).sum()), str(col)))
        n, col = max(found, default=(0, ""))
        if n < 0.3 * adata.n_vars:
            raise
        head, _, tail = str(exc).partition("Fix: ")
        raise EntityError(f"{head}Fix: pass --gene-symbols-key {col} (var column {col!r} holds symbols the entities "
                          f"name: {n} of {adata.n_vars} genes), or {tail}") from None


def _warn_unused(ctx: typer.Context, reasons: dict[str, str]) -> None:
    """A ``warning:`` line for each flag the user gave (command line or environment) that this run does not use:
    ``reasons`` maps the parameter name to why; a flag left at its default is not mentioned."""
    for name, why in reasons.items():  # by name: typer may bring its own copy of click's ParameterSource
        if getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "ENVIRONMENT"):
            warnings.warn(f"--{name.replace('_', '-')} is not used: {why}", UserWarning, stacklevel=2)


def _is_genetic(model: Any) -> bool:
    """True for a model trained on gene perturbations only (it scores compounds as the loss of their targets)."""
    return getattr(getattr(model, "members", [model])[0].space, "compounds", None) is None


_DOSE_UNUSED = ("this model learned gene perturbations only, so compounds are scored as the loss of their targets "
                "whatever the dose")
_LEVEL_UNUSED = "it sets the interval of an ensemble's answers, and MODEL_DIR is a single model (no intervals are written)"


def _split_labels(text: str, option: str) -> list[str]:
    """Split on commas only; labels are not stripped (the action parser reports stray whitespace)."""
    if text == "":
        raise BioworldError(f"{option} is empty; expected comma-separated labels such as 'control,STAT1,IFNGR1+STAT1'")
    labels = text.split(",")
    example = ",".join(lab.strip() for lab in labels if lab.strip()) or "control,STAT1"
    for label in labels:
        if not label.strip():
            raise BioworldError(f"{option} {text!r} has an empty label (two commas in a row, or one at an end); "
                                f"expected comma-separated labels. Fix: write {option} {example!r}.")
        if label != label.strip():
            raise BioworldError(f"{option} {text!r} has the label {label!r} with surrounding whitespace (labels are "
                                f"split on commas only and not stripped); expected labels without spaces around the "
                                f"commas. Fix: write {option} {example!r}.")
    return labels


def _is_model_dir(path: Path) -> bool:
    return (path / _MODEL_META).exists()


def _is_ensemble_dir(path: Path) -> bool:
    from bioworld._ensemble import ENSEMBLE_META

    return (path / ENSEMBLE_META).exists()


def _model_folder_of(path: Path) -> Optional[Path]:
    """The model or ensemble folder that ``path`` is (or lies inside), if any."""
    from bioworld._ensemble import ENSEMBLE_META

    p = path.resolve()
    for folder in (p, *p.parents):
        if (folder / _MODEL_META).is_file() or (folder / ENSEMBLE_META).is_file():
            return folder
    return None


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _check_out(out: Path, *, overwrite: bool, inputs: dict[str, Path], folder: bool = False,
               writes: tuple[str, ...] = ()) -> None:
    """Refuse an ``--out`` that would destroy something, before any work is done.

    Never (even with ``--overwrite``): onto an input (``inputs``: option -> path), into a model or
    ensemble folder. Without ``--overwrite``: onto an existing file (``folder=False``) or into an
    existing non-empty folder (``folder=True``; ``writes`` = the file names written there). A file
    (``folder=False``) is an AnnData file and must end in ``.h5ad``, so that it is found and opened as one.
    Also checks that the folder is writable.
    """
    from bioworld._atomic import check_writable
    from bioworld.errors import OutputError

    targets = [out / name for name in writes] if folder else [out]
    for option, path in inputs.items():
        for target in targets:
            if _same_path(target, path):
                raise OutputError(f"--out {str(out)!r} would overwrite the input {option} {str(path)!r}; expected an "
                                  f"output path that is not an input. Fix: choose another --out.")
    model = _model_folder_of(out)
    if model is not None:
        raise OutputError(f"--out {str(out)!r} is inside the model folder {str(model)!r}; expected a path outside "
                          "model folders (writing there could damage the model). Fix: choose another --out.")
    if folder:
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {str(out)!r} is a file; expected a folder to write {', '.join(writes) or 'the outputs'} into. "
                              "Fix: choose another --out.")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise OutputError(f"--out {str(out)!r} is a folder that is not empty; expected a new or empty folder. "
                              f"Fix: pass --overwrite to replace {' and '.join(writes)} there, or choose another --out.")
    else:
        if out.is_dir():
            raise OutputError(f"--out {str(out)!r} is a folder; expected a file path such as {str(out / 'out.h5ad')!r}. "
                              "Fix: choose another --out.")
        if out.suffix.lower() != ".h5ad":
            raise OutputError(f"--out {str(out)!r} does not end in .h5ad; expected an AnnData file path such as "
                              f"{str(out.with_name(out.name + '.h5ad'))!r} (the output is written as h5ad). "
                              "Fix: give --out a .h5ad name.")
        if out.exists() and not overwrite:
            raise OutputError(f"--out {str(out)!r} already exists; expected a new file. Fix: pass --overwrite to "
                              "replace it, or choose another --out.")
    check_writable(out)


# ------------------------------------------------------------------------------------ commands
@app.command("inspect")
@_command
def inspect_cmd(
    data: Annotated[str, typer.Argument(help="An .h5ad file, or 'papalexi' / 'l1000' for the bundled datasets.")],
    perturbation_key: Annotated[Optional[str], typer.Option(help="obs column with perturbation labels (default: perturbation).")] = None,
    control: Annotated[Optional[str], typer.Option(help="Label of unperturbed cells (default: control).")] = None,
    dose_key: Annotated[Optional[str], typer.Option(help="obs column with the (numeric) dose.")] = None,
    compound_id_key: Annotated[Optional[str], typer.Option(help="obs column with compound ids (e.g. BRD ids).")] = None,
    gene_symbols_key: Annotated[Optional[str], typer.Option(help="var column with gene symbols, if var_names are not symbols.")] = None,
    input: Annotated[Optional[str], typer.Option("--input", help="'counts' or 'log' (default: counts).")] = None,
    min_cells: Annotated[Optional[int], typer.Option(help="Groups with fewer cells are set aside (default as in training: 3 for counts, 1 for log input).")] = None,
    entities: Annotated[Optional[List[Path]], typer.Option(metavar="FILE", help="GMT or gene/pathway/weight TSV; repeatable, combined.")] = None,
    layer: LayerOption = None,
    id_map: IdMapOption = None,
) -> None:
    """Validate a dataset and show its perturbations and entity coverage.

    Options not given fall back to the register keywords a bioworld loader stored in the file
    (uns['bioworld']['loader']['register_kwargs']), then to the defaults.
    """
    from bioworld.data import format_registration, register
    from bioworld.entities import map_to_panel

    adata, source = _load_data(data, layer=layer)
    kwargs = _register_kwargs(adata, {
        "perturbation_key": perturbation_key, "control": control, "dose_key": dose_key,
        "compound_id_key": compound_id_key, "gene_symbols_key": gene_symbols_key,
        "input": _check_input(input), "min_cells_per_group": min_cells, "id_map": _id_map(id_map),
    })
    kwargs.setdefault("min_cells_per_group", 1 if kwargs.get("input") == "log" else 3)  # = WorldModel's default
    kwargs, compound_note = _compound_actions(adata, kwargs)
    with warnings.catch_warnings():
        # register() and map_to_panel() warn about what the summary below lists anyway
        warnings.simplefilter("ignore", UserWarning)
        reg = register(adata, **kwargs)
        entity_set, entity_source = _entity_set(entities)
        with _symbols_column_hint(adata, entities, kwargs.get("gene_symbols_key")):
            panel = map_to_panel(entity_set, reg.genes)
    typer.echo(f"data: {source}")
    if compound_note:
        typer.echo(compound_note)
    typer.echo(format_registration(reg))
    n = len(reg.findings)
    typer.echo("validation: passed" + (f" ({n} finding{'s' if n != 1 else ''} above)" if n else ", no findings"))
    typer.echo(f"entities ({entity_source}):")
    typer.echo(panel.summary())
    from bioworld.actions._knowledge import coverage_summary

    labels = [lab for lab in reg.perturbations if lab != reg.control]
    coverage = coverage_summary(labels, entity_set.genes())
    if coverage:
        typer.echo(coverage)


@app.command("simulate")
@_command
def simulate_cmd(
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder to write train.h5ad, pathways.gmt and the ground truth to.")],
    seed: Annotated[int, typer.Option(help="Seed of the simulation.")] = 0,
    n_cells_per_condition: Annotated[int, typer.Option(help="Cells sampled per intervention.")] = 200,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the files of an earlier simulation in --out.")] = False,
) -> None:
    """Simulate a perturbation screen with known causal ground truth."""
    from bioworld.data import simulate
    from bioworld.errors import BioworldError

    if seed < 0:
        raise BioworldError(f"--seed {seed} is negative; expected an integer >= 0. Fix: pass --seed 0 or another non-negative seed.")
    if n_cells_per_condition < 1:
        raise BioworldError(f"--n-cells-per-condition {n_cells_per_condition}; expected at least 1 cell per intervention. "
                            "Fix: pass e.g. --n-cells-per-condition 200.")
    writes = ("train.h5ad", "pathways.gmt", "truth_delta.csv", "truth_entity_delta.csv", "dag.json")
    _check_out(out, overwrite=overwrite, inputs={}, folder=True, writes=writes)
    result = simulate(seed=seed, n_cells_per_condition=n_cells_per_condition)
    folder = result.write(out)
    adata = result.adata
    labels = adata.obs["perturbation"].astype(str)
    typer.echo(f"simulated {adata.n_obs:,} cells x {adata.n_vars:,} genes, {labels.nunique() - 1} perturbations "
               f"+ control, {len(result.gmt)} pathways (seed {seed})")
    typer.echo(f"wrote {folder}:")
    for path in sorted(Path(folder).iterdir()):
        if path.is_file():
            typer.echo(f"  {path.name}  ({path.stat().st_size:,} bytes)")


@app.command("pretrain")
@_command
def pretrain_cmd(
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder to write atlas.safetensors + atlas.json to.")],
    seed: Annotated[int, typer.Option(help="Seed of initialisation, batches and the gene basis.")] = 0,
    steps: Annotated[Optional[int], typer.Option(help="Optimiser steps (default: PretrainConfig().steps).")] = None,
    no_knowledge: Annotated[bool, typer.Option("--no-knowledge", help="Leave the knowledge features out (ablation).")] = False,
    knowledge_retrieval: Annotated[bool, typer.Option("--knowledge-retrieval", help="The knowledge path for perturbations with no atlas signature: also read, in the context, the signatures of perturbations that share targets or mechanism, and train the hidden-signature rows on knowledge features without their own signatures (measured in benchmarks/results/atlas/ATLAS.md, unseen compounds).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an atlas model already in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    device: Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda", help="Where to pretrain: 'auto' (a CUDA GPU when torch sees one, else the CPU), 'cpu', 'cuda' or 'cuda:N'.")] = "cpu",
) -> None:
    """Pretrain the atlas model on the bundled perturbation atlas (all contexts, all signatures).

    The model predicts a perturbation's signature in any atlas context (cell line / cell type) from
    its signatures elsewhere, the context's own response, look-alike perturbations there and curated
    knowledge (targets, STRING / OmniPath, knockdown signatures). Several knowledge sources are
    non-commercial: atlas.json lists each with its licence.
    """
    from bioworld.errors import BioworldError, OutputError
    from bioworld.train.pretrain import META, WEIGHTS, PretrainConfig, pretrain_atlas

    if seed < 0:
        raise BioworldError(f"--seed {seed} is negative; expected an integer >= 0. Fix: pass --seed 0 or another non-negative seed.")
    if steps is not None and steps < 1:
        raise BioworldError(f"--steps {steps}; expected a positive number of optimiser steps. Fix: pass e.g. --steps 1000.")
    if knowledge_retrieval and no_knowledge:
        raise BioworldError("--knowledge-retrieval reads the curated knowledge that --no-knowledge leaves out. Fix: pass "
                            "only one of them.")
    if (out / META).exists() and not overwrite:
        raise OutputError(f"--out {str(out)!r} already holds an atlas model; expected a new folder. Fix: pass --overwrite "
                          "to replace it, or choose another --out.")
    from bioworld.train.config import resolve_device

    resolve_device(device)  # an unavailable --device fails before anything is read
    _check_out(out, overwrite=True, inputs={}, folder=True, writes=(WEIGHTS, META))
    cfg = PretrainConfig(seed=seed, use_knowledge=not no_knowledge, device=device, knowledge_retrieval=knowledge_retrieval,
                         drop_blinds_knowledge=knowledge_retrieval, **({"steps": steps} if steps else {}))
    model = pretrain_atlas(config=cfg, progress=not quiet)
    model.save(out)
    m = model.meta
    typer.echo(f"pretrained on {len(m['train_signatures']):,} signatures x {m['n_genes']:,} genes over "
               f"{len(m['contexts'])} contexts in {m['train_seconds']:.0f} s (final 1 - Pearson {m['final_loss']:.3f}); "
               f"wrote {out}")
    nc = [s["name"] for s in m["knowledge_sources"] if s.get("non_commercial")]
    if nc:
        typer.echo(f"  knowledge with non-commercial terms: {', '.join(nc)} (see {out / META})")


def _train_torchrun(nproc: int, data: str, out: Path, train_config: Any, flags: dict[str, Any],
                    unsupported: dict[str, bool]) -> int:
    """``bioworld train --nproc N``: the same training under ``torchrun --standalone`` (N local processes)."""
    import subprocess

    if nproc < 1:
        raise BioworldError(f"--nproc {nproc}; expected 1 (one process) or more. Fix: pass --nproc 2 or more for "
                            "data-parallel training.")
    bad = sorted("--" + k.replace("_", "-") for k, used in unsupported.items() if used)
    if bad:
        raise BioworldError(f"--nproc {nproc} does not combine with {', '.join(bad)}; expected only the options of "
                            "'python -m bioworld.distributed --help'. Fix: drop them, or train with --nproc 1.")
    on_gpu = train_config.resolved_device() != "cpu"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "bioworld.distributed", str(data), "--out", str(out), "--backend", "nccl" if on_gpu else "gloo"]
    for k in ("perturbation_key", "control", "input", "replicate_key", "holdout", "config", "seed", "max_steps", "device"):
        if flags[k] is not None:
            cmd += ["--" + k.replace("_", "-"), str(flags[k])]
    for e in flags["entities"] or []:
        cmd += ["--entities", str(e)]
    if not on_gpu and train_config.num_threads == 0:  # N processes on one machine: share the cores
        cmd += ["--threads", str(max(1, (os.cpu_count() or 2) // nproc))]
    cmd += [f for f, on in (("--backed", flags["backed"]), ("--overwrite", flags["overwrite"])) if on]
    if not flags["quiet"]:
        typer.echo("running: " + " ".join(cmd[1:]))
    return subprocess.run(cmd, check=False).returncode


@app.command("train")
@_command
def train_cmd(
    data: Annotated[str, typer.Argument(help="An .h5ad file, or 'papalexi' / 'l1000' for the bundled datasets.")],
    out: Annotated[Path, typer.Option("--out", metavar="MODEL_DIR", help="Model folder to write (model.safetensors + bioworld.json).")],
    entities: Annotated[Optional[List[Path]], typer.Option(metavar="FILE", help="GMT or gene/pathway/weight TSV; repeatable, combined (default: Hallmark + PROGENy).")] = None,
    perturbation_key: Annotated[Optional[str], typer.Option(help="obs column with perturbation labels (default: perturbation).")] = None,
    control: Annotated[Optional[str], typer.Option(help="Label of unperturbed cells (default: control).")] = None,
    dose_key: Annotated[Optional[str], typer.Option(help="obs column with the (numeric) dose.")] = None,
    compound_id_key: Annotated[Optional[str], typer.Option(help="obs column with compound ids (joined to the SMILES table).")] = None,
    smiles: Annotated[Optional[Path], typer.Option(help=f"CSV 'id,SMILES' (default with --compound-id-key: bundled {DEFAULT_SMILES}).")] = None,
    gene_symbols_key: Annotated[Optional[str], typer.Option(help="var column with gene symbols, if var_names are not symbols.")] = None,
    input: Annotated[Optional[str], typer.Option("--input", help="'counts' or 'log' (default: counts).")] = None,
    replicate_key: Annotated[Optional[str], typer.Option(help="obs column to pair control and perturbed cells within (default: auto-detected).")] = None,
    holdout: Annotated[Optional[str], typer.Option(help="Comma-separated perturbation labels never shown in training.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Training seed (overrides the config).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON file of TrainConfig fields.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimiser steps (overrides the config).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing model in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar or data summary; print only the wall time and where the model is.")] = False,
    backed: Annotated[bool, typer.Option("--backed", help="Leave X on disk and train out of core from blocks of the file (for data larger than memory).")] = False,
    members: Annotated[int, typer.Option("--members", min=1, help="Train an ensemble of this many seeds (seed, seed+1, ...) into MODEL_DIR/member_<k>; >= 2 gives prediction intervals.")] = 1,
    calibrate_folds: Annotated[int, typer.Option("--calibrate-folds", min=0, help="With --members >= 2: calibrate the intervals by leave-targets-out over this many folds (one extra training per fold; 0 = uncalibrated).")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted training whose state is in --out (saved every checkpoint_every steps); refused when the data, entities or config differ.")] = False,
    restarts: Annotated[int, typer.Option("--restarts", min=0, help="Single model: when the trained model did not learn its strongest training effects (WorldModel.training_fit, checked after every run), train again with the next seed, at most this many times (default 0: train once and report a failed check).")] = 0,
    min_cells: Annotated[Optional[int], typer.Option("--min-cells", help="Perturbation groups with fewer cells are set aside and listed (default: 3; the l1000 loader suggests 1).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", metavar="auto|cpu|cuda", help="Where to train: 'auto' (a CUDA GPU when torch sees one, else the CPU), 'cpu', 'cuda' or 'cuda:N' (overrides the config; default: cpu).")] = None,
    compound_targets: Annotated[Optional[Path], typer.Option("--compound-targets", metavar="TABLE", help="TSV/CSV with columns compound, target_gene: targets of compounds the bundled knowledge lacks.")] = None,
    no_knowledge: Annotated[bool, typer.Option("--no-knowledge", help="Represent actions by gene sets and fingerprints only, without the knowledge layer (atlas, STRING, OmniPath, compound targets); for the ablation.")] = False,
    nproc: Annotated[int, typer.Option("--nproc", help="Data-parallel training in this many local processes (torchrun --standalone; DistributedDataParallel, gloo; with --device cuda: nccl, one GPU each). Several machines: see the torchrun line in the README.")] = 1,
    layer: LayerOption = None,
    id_map: IdMapOption = None,
) -> None:
    """Train a world model (or a seed ensemble, --members) on a dataset and save it.

    Options not given fall back to the register keywords a bioworld loader stored in the file
    (uns['bioworld']['loader']['register_kwargs']), then to the defaults.
    """
    _check_train_flags(out, members=members, calibrate_folds=calibrate_folds, resume=resume, backed=backed,
                       overwrite=overwrite, seed=seed, max_steps=max_steps)
    train_config = _train_config(config, seed=seed, max_steps=max_steps, device=device)
    if nproc != 1:
        code = _train_torchrun(nproc, data, out, train_config, dict(
            entities=entities, perturbation_key=perturbation_key, control=control, input=input,
            replicate_key=replicate_key, holdout=holdout, config=config, seed=seed, max_steps=max_steps,
            device=device, backed=backed, overwrite=overwrite, quiet=quiet), dict(
            members=members != 1, calibrate_folds=bool(calibrate_folds), resume=resume, restarts=bool(restarts),
            min_cells=min_cells is not None, compound_targets=compound_targets is not None, no_knowledge=no_knowledge,
            smiles=smiles is not None, dose_key=dose_key is not None, compound_id_key=compound_id_key is not None,
            gene_symbols_key=gene_symbols_key is not None, layer=layer is not None, id_map=id_map is not None))
        raise typer.Exit(code)

    def _train_locked() -> None:
        adata, source = _load_data(data, backed=backed, layer=layer)
        kwargs = _register_kwargs(adata, {
            "perturbation_key": perturbation_key, "control": control, "dose_key": dose_key,
            "compound_id_key": compound_id_key, "gene_symbols_key": gene_symbols_key,
            "input": _check_input(input), "replicate_key": replicate_key, "min_cells_per_group": min_cells,
            "id_map": _id_map(id_map),
        })
        if not backed:
            kwargs, compound_note = _compound_actions(adata, kwargs)
            if compound_note and not quiet:
                typer.echo(compound_note)
        smiles_path = _smiles_path(smiles, kwargs.get("compound_id_key"))
        wm_kwargs = dict(
            entities=[str(p) for p in entities] if entities else None,
            smiles=smiles_path,
            holdout=_split_labels(holdout, "--holdout") if holdout is not None else [],
            knowledge=not no_knowledge,
            compound_targets=None if compound_targets is None else _existing(compound_targets, "--compound-targets"),
            **kwargs,
        )
        from bioworld.data._backed import scan_progress

        with _symbols_column_hint(adata, entities, kwargs.get("gene_symbols_key")), scan_progress(not quiet):
            if members > 1:
                _train_ensemble(adata, out, train_config, wm_kwargs, members=members, calibrate_folds=calibrate_folds,
                                overwrite=overwrite, quiet=quiet)
            else:
                _train_single(adata, source, out, train_config, wm_kwargs, restarts=restarts if not backed else 0,
                              resume=resume, overwrite=overwrite, quiet=quiet)

    _run_locked(out, _train_locked)


def _smiles_path(smiles: Optional[Path], compound_id_key: Optional[str]) -> Optional[str]:
    """``--smiles``, or the bundled LINCS table when ``--compound-id-key`` is given without it."""
    if smiles is None and compound_id_key:
        from bioworld.data import bundled_path

        smiles = bundled_path(DEFAULT_SMILES)
    return None if smiles is None else str(smiles)


def _run_locked(out: Path, run: Any) -> None:
    """``run()`` with ``out`` locked for the whole run (a second training into it is refused at once, and it is
    checked for writability before the data are read); folders created here are removed when ``run`` fails."""
    from bioworld._atomic import folder_lock, remove_created

    done = False
    created: list[Path] = []
    try:
        with folder_lock(out) as created:
            run()
            done = True
    finally:
        if not done:
            remove_created(created)


def _train_config(config: Path | None, *, seed: int | None, max_steps: int | None, device: str | None) -> Any:
    """The TrainConfig of ``--config`` (or the defaults) with ``--seed`` / ``--max-steps`` / ``--device`` laid over it;
    an unavailable device fails here, before the data are read."""
    from dataclasses import replace

    from bioworld.train import TrainConfig

    train_config = TrainConfig.from_file(config) if config is not None else TrainConfig()
    overrides = {k: v for k, v in {"seed": seed, "max_steps": max_steps, "device": device}.items() if v is not None}
    if overrides:
        train_config = replace(train_config, **overrides)
    train_config.resolved_device()
    return train_config


def _check_train_flags(out: Path, *, members: int, calibrate_folds: int, resume: bool, backed: bool, overwrite: bool,
                       seed: int | None, max_steps: int | None) -> None:
    """Refuse flag combinations of ``bioworld train`` that cannot work, before anything is read."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {str(out)!r} is a file; expected a folder for the model. Fix: choose another path.")
    if members == 1 and calibrate_folds:
        raise BioworldError("--calibrate-folds needs an ensemble (intervals come from the held-out error of its members); expected "
                            "--members 2 or more. Fix: add --members 5, or drop --calibrate-folds.")
    if members > 1 and resume:
        raise BioworldError("--resume with --members is not supported (ensembles keep no training state). Fix: train "
                            "again without --resume, or train the members one by one with --seed")
    if members > 1 and backed:
        raise BioworldError("--members with --backed is not supported (members would read the file at once). Fix: train the "
                            "members one by one with --backed and --seed 0, 1, ...")
    if (_is_model_dir(out) or _is_ensemble_dir(out)) and not overwrite:
        raise CheckpointError(
            f"{str(out)!r} already holds a model ({_MODEL_META}); expected a new or empty folder. "
            "Fix: pass --overwrite to replace it, or choose another --out."
        )
    if seed is not None and seed < 0:
        raise BioworldError(f"--seed {seed}; expected a non-negative integer. Fix: pass --seed 0 (or another integer >= 0).")
    if max_steps is not None and max_steps < 1:
        raise BioworldError(f"--max-steps {max_steps}; expected at least 1 optimiser step. Fix: pass --max-steps 1 or "
                            "more, or leave it out to size training to the data (with early stopping).")


def _refuse_new_model(out: Path, overwrite: bool, what: str) -> None:
    """Refuse to save when a model appeared in ``out`` while ``what`` trained (another program wrote it)."""
    if (_is_model_dir(out) or _is_ensemble_dir(out)) and not overwrite:
        raise CheckpointError(
            f"a model appeared in --out {str(out)!r} while {what} trained (written by another program); "
            "expected the folder to stay free of models. Fix: pass --overwrite to replace it, or choose another --out."
        )


def _train_ensemble(adata: Any, out: Path, train_config: Any, wm_kwargs: dict[str, Any], *, members: int,
                    calibrate_folds: int, overwrite: bool, quiet: bool) -> None:
    """``bioworld train --members N``: a seed ensemble (optionally calibrated) saved to ``out``."""
    import bioworld as bw

    t0 = time.perf_counter()
    ens = bw.Ensemble.train(adata, seeds=[train_config.seed + k for k in range(members)], progress=not quiet,
                            config=train_config, **wm_kwargs)
    if calibrate_folds:
        cal = ens.calibrate(adata, n_folds=calibrate_folds, progress=not quiet, **wm_kwargs)
        typer.echo(f"calibrated on {cal.n_perturbations} held-out perturbations: 90% half-width = "
                   f"{cal.quantiles['0.9']:.3f} x each gene's spread")
    _refuse_new_model(out, overwrite, "the ensemble")
    ens.save(out)
    typer.echo(f"trained {members} members in {time.perf_counter() - t0:.1f} s (wall time, including setup)")
    typer.echo(f"ensemble saved to {out}")


def _train_single(adata: Any, source: str, out: Path, train_config: Any, wm_kwargs: dict[str, Any], *, restarts: int,
                  resume: bool, overwrite: bool, quiet: bool) -> None:
    """``bioworld train``: one model (retrained with the next seeds on a failed fit check, up to ``restarts``)."""
    import bioworld as bw
    from bioworld.train.fit_check import train_until_fit

    t0 = time.perf_counter()
    shown = []

    def build(cfg: Any) -> Any:
        model = bw.WorldModel(adata, config=cfg, **wm_kwargs)
        _check_free_space(out, model)  # before training, not after it
        if not quiet and not shown:
            typer.echo(f"data: {source}")
            typer.echo(repr(model))
            for finding in model.findings:
                typer.echo(f"  - {finding}")
            shown.append(True)
        return model

    config_now, restarts_left = _train_state_plan(out, train_config, restarts, resume=resume, overwrite=overwrite)
    wm = train_until_fit(build, config_now, restarts=restarts_left, progress=not quiet,
                         log=lambda m: typer.echo(m, err=True), state_dir=out / TRAIN_STATE_DIR)
    if wm.train_config.seed != train_config.seed:
        typer.echo(f"kept the run with seed {wm.train_config.seed} (seed {train_config.seed} did not learn the strong effects)")
    wall = time.perf_counter() - t0
    _refuse_new_model(out, overwrite, "this one")
    wm.save(out, overwrite=True)
    with contextlib.suppress(OSError):
        (out / TRAIN_STATE_DIR).rmdir()  # cleared by the finished run
    steps = wm.train_result.steps if wm.train_result is not None else train_config.max_steps
    typer.echo(f"trained {steps} steps in {wall:.1f} s (wall time, including setup)")
    typer.echo(f"model saved to {out}")


def _check_free_space(out: Path, model: Any) -> None:
    """Refuse before training when ``out``'s filesystem cannot hold the model and its training state."""
    import shutil

    import torch

    from bioworld.errors import OutputError
    from bioworld.model import JEPA

    E, G = model.membership.shape
    with torch.device("meta"):  # sizes only: nothing is allocated
        n_params = sum(t.numel() for t in JEPA(model.model_config, torch.empty(E, G)).state_dict().values())
    # model + training state (weights and two AdamW moments) side by side, the arrays stored beside
    # the weights, and room for bioworld.json
    need = 4 * 4 * n_params + model.reference.nbytes + 3 * model.membership.nbytes + (4 << 20)
    free = shutil.disk_usage(out).free
    if free < need:
        raise OutputError(
            f"--out {str(out)!r} is on a filesystem with {free / 2**20:.1f} MB free; expected about "
            f"{need / 2**20:.1f} MB for the model and its training state. Fix: free space there or choose another --out."
        )


#: Hidden folder in ``train --out`` holding the resumable state of a running training.
TRAIN_STATE_DIR = ".bioworld-train-state"


def _train_state_plan(out: Path, config: Any, restarts: int, *, resume: bool, overwrite: bool) -> tuple[Any, int]:
    """The config and restarts to train with, given an interrupted run's state in ``out`` (if any)."""
    from dataclasses import replace

    from bioworld.train.checkpoint import STATE_META, clear_train_state, read_json

    state_dir = out / TRAIN_STATE_DIR
    pending = (state_dir / STATE_META).is_file()
    if not pending:
        if resume:
            raise CheckpointError(f"--resume but --out {str(out)!r} holds no interrupted training; expected the --out "
                                  "of a training that was stopped. Fix: drop --resume to train from scratch.")
        return config, restarts
    state = read_json(state_dir / STATE_META, "training state")
    step = state.get("step") if isinstance(state, dict) else None
    saved_seed = (state.get("config") or {}).get("seed") if isinstance(state, dict) and isinstance(state.get("config"), dict) else None
    if not resume:
        if not overwrite:
            raise CheckpointError(
                f"--out {str(out)!r} holds the state of an interrupted training (step {step}); expected a folder without "
                "one. Fix: pass --resume to continue it, or --overwrite to discard it and train from scratch."
            )
        clear_train_state(state_dir)
        return config, restarts
    k = saved_seed - config.seed if isinstance(saved_seed, int) and not isinstance(saved_seed, bool) else -1
    if not 0 <= k <= restarts:
        raise CheckpointError(
            f"--resume: the interrupted training in {str(out)!r} used seed {saved_seed!r}, this run trains seed "
            f"{config.seed} with up to {restarts} restart(s); expected the options of the interrupted run. Fix: pass "
            "the same --seed, --config and --restarts as it had, or --overwrite without --resume to start over."
        )
    return replace(config, seed=saved_seed), restarts - k  # the remaining restarts continue after it


@app.command("predict")
@_command
def predict_cmd(
    ctx: typer.Context,
    model_dir: Annotated[Path, typer.Argument(help="A model (or ensemble) folder written by 'bioworld train'.")],
    perturbations: Annotated[str, typer.Option(help="Comma-separated labels, e.g. 'control,JAK2,IFNGR1+STAT1'.")],
    out: Annotated[Path, typer.Option("--out", metavar="PRED.h5ad", help="AnnData (.h5ad) to write: X = predicted mean, layers['delta'].")],
    level: Annotated[float, typer.Option("--level", help="Ensembles only: interval level for layers['delta_lo'] / ['delta_hi'].")] = 0.9,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists (never an input or a model folder).")] = False,
    device: Annotated[Optional[str], typer.Option("--device", metavar="auto|cpu|cuda", help="Where to run the model: 'auto' (a CUDA GPU when torch sees one, else the CPU), 'cpu', 'cuda' or 'cuda:N' (default: cpu).")] = None,
    context: Annotated[Optional[str], typer.Option("--context", metavar="CONTEXT", help="An atlas context (cell line / cell type, e.g. A498, myeloid): predict signatures there with the pretrained atlas model (MODEL_DIR may also be a 'bioworld pretrain' folder).")] = None,
    compound: Annotated[Optional[List[str]], typer.Option("--compound", metavar="NAME=SMILES", help="A compound the model has not met, by structure; repeatable.")] = None,
    compound_targets: Annotated[Optional[Path], typer.Option("--compound-targets", metavar="TABLE", help="TSV/CSV with columns compound, target_gene for compounds the bundled knowledge lacks.")] = None,
) -> None:
    """Predict the mean expression under perturbations and write it as an h5ad.

    Compounds: any compound the bundled knowledge resolves by name (e.g. 'trametinib@10') needs
    nothing more; others are given with --compound NAME=SMILES or --compound-targets TABLE.
    With --context, X is the predicted signature in that atlas context on the atlas score scale.

    For an ensemble folder, X and layers['delta'] are the members' mean, layers['delta_sd'] their
    spread and layers['delta_lo'] / ['delta_hi'] the interval (uns['bioworld']['interval'] says
    whether it is calibrated).
    """
    from bioworld.report._h5ad import write_h5ad_atomic

    labels = _split_labels(perturbations, "--perturbations")
    _check_out(out, overwrite=overwrite, inputs={"MODEL_DIR": model_dir})
    new_smiles = _compound_smiles(compound)
    targets = None if compound_targets is None else _existing(compound_targets, "--compound-targets")
    from bioworld.query._atlas import CONTEXT_IGNORES

    if (model_dir / "atlas.json").is_file():  # a 'bioworld pretrain' folder
        from bioworld.query._atlas import predict_in_context
        from bioworld.train.pretrain import AtlasModel

        if context is None:
            raise BioworldError(f"{str(model_dir)!r} is an atlas model; expected --context CONTEXT (an atlas cell line / "
                                "cell type such as A498 or myeloid). Fix: pass --context.")
        _warn_unused(ctx, {"compound": CONTEXT_IGNORES, "compound_targets": CONTEXT_IGNORES, "level": _LEVEL_UNUSED})
        pred = predict_in_context(AtlasModel.load(model_dir), labels, context)
        write_h5ad_atomic(pred, out)
        typer.echo(f"predicted {pred.n_obs} signature(s) in {context} x {pred.n_vars:,} genes; wrote {out}")
        return
    wm = _load_model(model_dir, device=device)
    if _is_ensemble(wm):
        if context is not None:
            raise BioworldError("--context works with a single model folder, not an ensemble. Fix: pass one member "
                                "folder (MODEL_DIR/member_0) or drop --context.")
        pred = wm.predict(labels, level=level, compounds=new_smiles or None, compound_targets=targets)
    elif context is not None:
        _warn_unused(ctx, {"compound": CONTEXT_IGNORES, "compound_targets": CONTEXT_IGNORES, "level": _LEVEL_UNUSED})
        pred = wm.predict(labels, context=context)
    else:
        _warn_unused(ctx, {"level": _LEVEL_UNUSED})
        pred = wm.predict(labels, compounds=new_smiles or None, compound_targets=targets)
    write_h5ad_atomic(pred, out)
    typer.echo(f"predicted {pred.n_obs} perturbation(s) x {pred.n_vars:,} genes; wrote {out}")
    _echo_compounds_as_targets(pred)
    if _is_ensemble(wm):
        info = pred.uns["bioworld"]["interval"]
        typer.echo(f"  {len(wm.members)} members; {level:.0%} intervals {'calibrated' if info['calibrated'] else 'UNCALIBRATED (model variance only)'}")


def _echo_compounds_as_targets(answer: Any) -> None:
    """One line per compound a model of gene perturbations answered as the loss of its targets."""
    for label, text in (answer.uns.get("bioworld", {}).get("compounds_as_targets") or {}).items():
        typer.echo(f"  {label}: {text}")


def _compound_smiles(items: Optional[List[str]]) -> dict[str, str]:
    """``--compound NAME=SMILES`` options as a dict (structures are parsed when features are built)."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, smi = item.partition("=")
        if not sep or not name.strip() or not smi.strip():
            raise BioworldError(f"--compound {item!r}; expected NAME=SMILES, e.g. --compound 'mydrug=CC(=O)Oc1ccccc1C(=O)O'.")
        out[name.strip()] = smi.strip()
    return out


def _existing(path: Path, option: str) -> str:
    if not path.is_file():
        raise BioworldError(f"{option} {str(path)!r} does not exist; expected a TSV/CSV file with columns compound, "
                            f"target_gene. Fix: check the path.")
    return str(path)


# ------------------------------------------------------- counterfactual, prioritize, demo commands
def _load_model(model_dir: Path, *, ensemble_ok: bool = True, device: Optional[str] = None) -> Any:
    """``bw.WorldModel.load`` (or ``bw.Ensemble.load`` for an ensemble folder) with one-line errors;
    ``device`` (``--device``) moves it there (an unavailable device is refused before data are read)."""
    model = _load_model_cpu(model_dir, ensemble_ok=ensemble_ok)
    return model if device is None else model.to(device)


def _load_model_cpu(model_dir: Path, *, ensemble_ok: bool = True) -> Any:
    import bioworld as bw

    if not model_dir.is_dir():
        raise CheckpointError(
            f"model folder {str(model_dir)!r} does not exist; expected a folder written by 'bioworld train'. "
            "Fix: check the path."
        )
    if _is_ensemble_dir(model_dir):
        if not ensemble_ok:
            raise BioworldError(f"{str(model_dir)!r} is an ensemble; this command takes one model. "
                                f"Fix: pass one member, e.g. {str(model_dir / 'member_0')!r}.")
        return bw.Ensemble.load(model_dir)
    return bw.WorldModel.load(model_dir)


def _is_ensemble(model: Any) -> bool:
    return hasattr(model, "members")


@app.command("counterfactual")
@_command
def counterfactual_cmd(
    ctx: typer.Context,
    model_dir: Annotated[Path, typer.Argument(help="A model folder written by 'bioworld train'.")],
    cells: Annotated[Path, typer.Option("--cells", metavar="CELLS.h5ad", help="Cells to intervene on (the model's gene panel; counts or log as trained).")],
    intervention: Annotated[List[str], typer.Option("--intervention", metavar="SPEC", help="An intervention, e.g. 'silence:HALLMARK_INTERFERON_GAMMA_RESPONSE', 'STAT1', 'IFNGR1+IRF1'; repeatable.")],
    out: Annotated[Path, typer.Option("--out", metavar="CF.h5ad", help="AnnData (.h5ad) to write: rows = intervention x cell.")],
    level: Annotated[float, typer.Option("--level", help="Ensembles only: interval level of the population effects.")] = 0.9,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists (never an input or a model folder).")] = False,
    device: Annotated[Optional[str], typer.Option("--device", metavar="auto|cpu|cuda", help="Where to run the model: 'auto' (a CUDA GPU when torch sees one, else the CPU), 'cpu', 'cuda' or 'cuda:N' (default: cpu).")] = None,
    layer: LayerOption = None,
) -> None:
    """Predict each cell's state under each intervention and write it as an h5ad.

    X = predicted expression on the model's scale; layers['delta'] = X minus the same cells'
    predicted unperturbed state; obs = the cells' own columns + bw_intervention, bw_cell; obsm = the
    cells' embeddings + obsm['bw_entity_shift'] (a table, columns = entities);
    uns['bioworld']['entity_effects'][SPEC] = entities ordered by latent shift (columns entity,
    shift, share). For an ensemble folder: the members' mean, layers['delta_sd'] and
    uns['bioworld']['population'][SPEC] = {mean, sd, lo, hi} of the cells' mean delta.
    """
    from bioworld.data import read_h5ad
    from bioworld.report._h5ad import write_h5ad_atomic

    for spec in intervention:  # an empty or space-padded SPEC is the option's text, not the data's labels
        if not spec.strip() or spec != spec.strip():
            raise BioworldError(f"--intervention {spec!r} is empty or has surrounding whitespace; expected a label "
                                "such as 'STAT1' or 'silence:ENTITY'. Fix: write --intervention "
                                f"{spec.strip() or 'STAT1'!r}.")
    _check_out(out, overwrite=overwrite, inputs={"--cells": cells, "MODEL_DIR": model_dir})
    wm = _load_model(model_dir, device=device)
    adata = read_h5ad(cells, layer=layer)
    if not _is_ensemble(wm):
        _warn_unused(ctx, {"level": _LEVEL_UNUSED})
    cf = wm.counterfactual(adata, list(intervention)) if not _is_ensemble(wm) else \
        wm.counterfactual(adata, list(intervention), level=level)
    write_h5ad_atomic(cf, out)
    typer.echo(f"counterfactuals: {len(intervention)} intervention(s) x {adata.n_obs:,} cells = {cf.n_obs:,} rows "
               f"x {cf.n_vars:,} genes; wrote {out}")
    _echo_compounds_as_targets(cf)
    from bioworld.report._h5ad import effect_records

    for spec, effects in cf.uns["bioworld"]["entity_effects"].items():
        top = ", ".join(f"{e['entity']} ({e['shift']:.2f})" for e in effect_records(effects)[:3])
        typer.echo(f"  {spec}: moves {top}")


#: Cells the counterfactual section of 'prioritize --counterfactuals' is computed on (a seeded subsample).
CF_CELLS = 200


def _best_counterfactuals(wm: Any, table: Any, adata: Any, n: int) -> Any:
    """Counterfactuals of the ``n`` best rows of the report's main table that the model answers, on up to
    ``CF_CELLS`` of the cells, each under its row label (a genetic model's compound is the knockout of
    its targets, ``action``); a compound wider than the model's ``max_components`` is passed over, said so."""
    import numpy as np

    from bioworld.query._anndata import relabel_interventions
    from bioworld.report.html import main_rows

    top = main_rows(table)
    acts = top["action"].astype(str) if "action" in top.columns else top["intervention"].astype(str)
    A = wm.engine.space.max_components
    names: dict[str, str] = {}
    wide = 0
    for act, lab in zip(acts, top["intervention"].astype(str)):
        if len(names) >= n:
            break
        if len(wm.engine.space.parse(act).components) > A:
            wide += 1
        else:
            names.setdefault(act, lab)
    if wide:
        typer.echo(f"counterfactuals: {wide} row(s) passed over (a compound scored as the loss of more than {A} "
                   "targets; the model answers at most that many perturbations at once)")
    if not names:
        return None
    sub = adata[np.sort(np.random.default_rng(0).choice(adata.n_obs, min(CF_CELLS, adata.n_obs), replace=False))].copy()
    cf = relabel_interventions(wm.counterfactual(sub, list(names)), names)
    typer.echo(f"counterfactuals: {len(names)} intervention(s) on {sub.n_obs:,} cells")
    return cf


@app.command("prioritize")
@_command
def prioritize_cmd(
    ctx: typer.Context,
    model_dir: Annotated[Path, typer.Argument(help="A model folder written by 'bioworld train'.")],
    cells: Annotated[Path, typer.Option("--cells", metavar="CELLS.h5ad", help="Starting cells (the model's gene panel).")],
    goal: Annotated[str, typer.Option("--goal", help="'down:ENTITY', 'up:ENTITY' or 'toward:control'.")],
    out: Annotated[Path, typer.Option("--out", metavar="REPORT_DIR", help="Folder for ranked_interventions.csv and report.html.")],
    genes: Annotated[Optional[str], typer.Option(help="Comma-separated candidate gene knockouts, or 'all' (every gene the model can represent). Default: the data's targets plus the --max-genes genes closest to the goal entity's genes.")] = None,
    max_genes: Annotated[int, typer.Option("--max-genes", min=0, help="Default gene candidates in all (the data's own targets always kept).")] = 1000,
    dose: Annotated[float, typer.Option("--dose", min=0.0, help="Dose of the compound candidates (every compound the model resolves; compound models only).")] = 1.0,
    pairs: Annotated[bool, typer.Option("--pairs/--no-pairs", help="Also score pairs of interventions (default: yes).")] = True,
    counterfactuals: Annotated[int, typer.Option("--counterfactuals", min=0, metavar="N", help="Explain the N best interventions of the report's main table (unflagged genes, compounds, pairs) with counterfactuals on up to 200 of the cells: the entities they move, the most-changed genes and enriched pathways (default: 0, none).")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the report files in a non-empty --out folder (never an input or a model folder).")] = False,
    device: Annotated[Optional[str], typer.Option("--device", metavar="auto|cpu|cuda", help="Where to run the model: 'auto' (a CUDA GPU when torch sees one, else the CPU), 'cpu', 'cuda' or 'cuda:N' (default: cpu).")] = None,
    layer: LayerOption = None,
) -> None:
    """Rank interventions that move the cells towards a goal; write the ranked CSV and an HTML report."""
    from bioworld.data import read_h5ad
    from bioworld.query import Goal
    from bioworld.report import write_report
    from bioworld.report.html import CSV_NAME, REPORT_NAME

    _check_out(out, overwrite=overwrite, inputs={"--cells": cells, "MODEL_DIR": model_dir}, folder=True,
               writes=(CSV_NAME, REPORT_NAME))
    wm = _load_model(model_dir, ensemble_ok=False, device=device)
    Goal.parse(goal, entity_names=wm.entity_names)  # a bad goal fails before the cells are read
    adata = read_h5ad(cells, layer=layer)
    every = genes is not None and genes.strip().lower() == "all"
    _warn_unused(ctx, {**({"max_genes": "--genes names the gene candidates"} if genes is not None else {}),
                       **({"dose": _DOSE_UNUSED} if _is_genetic(wm) else {})})
    result = wm.prioritize(adata, goal, genes=_split_labels(genes, "--genes") if genes is not None and not every else None,
                           max_genes=None if every else max_genes, dose=dose, pairs=pairs)
    cf = _best_counterfactuals(wm, result.table, adata, counterfactuals) if counterfactuals else None
    report = write_report(result, out, model=wm, counterfactuals=cf)
    table = result.table
    typer.echo(f"scored {len(table):,} interventions on {result.provenance.get('n_cells_used', adata.n_obs):,} cells "
               f"in {result.wall_s:.1f} s; best:")
    for _, row in table.head(5).iterrows():
        typer.echo(f"  {int(row['rank'])}. {row['intervention']} ({row['kind']}, {'seen' if row['seen'] else 'unseen'})  "
                   f"score {row['score']:.3f} [{row['score_lo']:.3f}, {row['score_hi']:.3f}]")
    if result.provenance.get("compounds_not_scored_text"):
        typer.echo(f"  {result.provenance['compounds_not_scored_text']}")
    merged = result.provenance.get("compounds_same_action") or {}
    if merged:
        n = sum(len(v) for v in merged.values())
        typer.echo(f"  {n:,} compound(s) scored as the same action as another (the same representable targets) share "
                   f"its row: {len(merged):,} row(s) name them in column same_action")
    n_flag = int((table["flag"] != "").sum())
    if n_flag:
        typer.echo(f"  {n_flag:,} candidate(s) act on the goal's own readout: flagged 'readout' and ranked last")
    typer.echo(f"wrote {report.parent / 'ranked_interventions.csv'}")
    typer.echo(f"Report: {report.resolve()}")


@app.command("demo")
@_command
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder for the model, the report and its tables.")] = Path("bioworld-demo"),
    max_steps: Annotated[Optional[int], typer.Option(help="Training steps (default: the TrainConfig default).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars; print only the report path.")] = False,
) -> None:
    """Train on the bundled Papalexi screen (or reuse the cached model), answer questions, write the report."""
    from bioworld._demo import run_demo

    if max_steps is not None and max_steps < 1:
        raise BioworldError(f"--max-steps {max_steps}; expected a positive number of training steps")
    run_demo(out, max_steps=max_steps, progress=not quiet)


# --------------------------------------------------------------------------------------- design
def _read_candidates(path: Path) -> list[str]:
    """Labels from a candidates file: one per line, or a CSV/TSV whose header has a ``perturbation`` column
    (blank lines and lines starting with ``#`` are skipped)."""
    if not path.is_file():
        raise BioworldError(f"--candidates {str(path)!r} does not exist; expected a text file with one perturbation "
                            "label per line (or a CSV/TSV with a 'perturbation' column). Fix: check the path.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BioworldError(f"--candidates {str(path)!r} is not UTF-8 text; expected one perturbation label per "
                            "line") from None
    lines = [ln.rstrip("\r") for ln in text.split("\n") if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise BioworldError(f"--candidates {str(path)!r} holds no labels; expected one perturbation label per line "
                            "such as 'JAK2' or 'ruxolitinib@1'")
    sep = "\t" if "\t" in lines[0] else "," if "," in lines[0] else None
    if sep is None and lines[0].strip() == "perturbation":  # a one-column table with its header
        sep = ","
    if sep is not None:
        header = [h.strip() for h in lines[0].split(sep)]
        if "perturbation" not in header:
            raise BioworldError(f"--candidates {str(path)!r}: the first line {lines[0][:60]!r} has several columns but "
                                "none is named 'perturbation'; expected one label per line, or a table with a "
                                "'perturbation' column")
        col = header.index("perturbation")
        rows = [ln.split(sep) for ln in lines[1:]]
        short = [i + 2 for i, r in enumerate(rows) if len(r) <= col]
        if short:
            raise BioworldError(f"--candidates {str(path)!r}: line(s) {short[:5]} have no 'perturbation' column; "
                                "expected every row to have one")
        labels = [r[col].strip() for r in rows]
    else:
        labels = [ln.strip() for ln in lines]
    if not labels:
        raise BioworldError(f"--candidates {str(path)!r} has a header but no rows; expected at least one label")
    return labels


@app.command("design")
@_command
def design_cmd(
    ctx: typer.Context,
    model_dir: Annotated[Path, typer.Argument(help="A model or ensemble folder written by 'bioworld train' (an ensemble's members disagree where the model is uncertain).")],
    budget: Annotated[int, typer.Option("--budget", help="How many perturbations to measure next.")],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder for design.csv and design.html.")],
    goal: Annotated[Optional[str], typer.Option("--goal", help="'down:ENTITY', 'up:ENTITY' or 'toward:control': needed by --strategy discovery; weights information by goal value.")] = None,
    candidates: Annotated[Optional[Path], typer.Option("--candidates", metavar="FILE", help="Perturbation labels to choose from: one per line, or a CSV/TSV with a 'perturbation' column. Default: the planner's genome-wide candidates not yet measured.")] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="information (default), mix, discovery, error (expected error: true size expected from measured look-alikes, spread over knowledge; best with knowledge on the simulator, worse than random on Papalexi), knowledge (baseline) or random (baseline).")] = "information",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the reference-cell subsample, bootstraps and the random order.")] = 0,
    max_genes: Annotated[int, typer.Option("--max-genes", help="Default gene candidates in all (the data's own targets always kept).")] = 1000,
    dose: Annotated[float, typer.Option("--dose", help="Dose of the default compound candidates (compound models only).")] = 1.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace design.csv / design.html in a non-empty --out folder.")] = False,
    network: Annotated[Optional[Path], typer.Option("--network", metavar="FILE", help="--strategy error only: your own directed network, a CSV/TSV with 'source' and 'target' columns (genes and/or entity names); a candidate that reaches more of it is expected to move more.")] = None,
) -> None:
    """Rank the next perturbations to measure so the model (and the goal ranking) improve fastest."""
    from bioworld.query._design import STRATEGIES, design
    from bioworld.report._design_html import DESIGN_CSV, DESIGN_HTML, write_design

    if budget < 1:
        raise BioworldError(f"--budget {budget}; expected a whole number >= 1 of perturbations to measure next")
    if strategy not in STRATEGIES:
        raise BioworldError(f"--strategy {strategy!r} is unknown; expected one of {', '.join(STRATEGIES)}")
    if max_genes < 0:
        raise BioworldError(f"--max-genes {max_genes}; expected a number >= 0")
    if not dose >= 0 or dose == float("inf"):
        raise BioworldError(f"--dose {dose}; expected a finite dose >= 0 in the data's unit")
    if strategy == "discovery" and goal is None:
        raise BioworldError("--strategy discovery ranks by expected goal value and needs --goal "
                            "(e.g. --goal down:HALLMARK_INTERFERON_GAMMA_RESPONSE)")
    if network is not None and strategy != "error":
        raise BioworldError(f"--network sizes the expected errors of --strategy error; --strategy {strategy} does not "
                            "read it. Fix: add --strategy error, or drop --network")
    inputs = {"MODEL_DIR": model_dir} if candidates is None else {"MODEL_DIR": model_dir, "--candidates": candidates}
    if network is not None:
        inputs["--network"] = network
    _check_out(out, overwrite=overwrite, inputs=inputs, folder=True, writes=(DESIGN_CSV, DESIGN_HTML))
    labels = _read_candidates(candidates) if candidates is not None else None
    model = _load_model(model_dir)
    if goal is not None:
        from bioworld.query import Goal

        Goal.parse(goal, entity_names=list(getattr(model, "members", [model])[0].entity_names))
    net = None
    if network is not None:
        from bioworld.query._reach import read_network

        net = read_network(network)  # read before the model: a bad file fails fast
    given = "--candidates lists the candidates (--max-genes and --dose shape the default ones)"
    _warn_unused(ctx, {"max_genes": given, "dose": given} if labels is not None else
                 {"dose": _DOSE_UNUSED} if _is_genetic(model) else {})
    table = design(model, labels, budget=budget, goal=goal, strategy=strategy, seed=seed, max_genes=max_genes, dose=dose,
                   network=net)
    csv_path, html_path = write_design(table, out, model_name=model_dir.name)
    a = table.attrs
    typer.echo(f"design ({strategy}): chose {len(table)} of {a['n_candidates']:,} candidates not yet measured "
               f"(uncertainty: {a['uncertainty']})")
    if net is not None:
        typer.echo(f"  expected sizes scaled by reach in {network.name} ({a['network_nodes']:,} nodes)")
    if len(table) < budget:
        typer.echo(f"  only {len(table)} candidates: --budget {budget} not filled")
    if a["excluded_measured"]:
        typer.echo(f"  {len(a['excluded_measured'])} {'given ' if labels is not None else ''}candidate(s) already "
                   "measured, left out: "
                   f"{', '.join(a['excluded_measured'][:5])}")
    if a.get("n_flagged"):
        typer.echo(f"  {a['n_flagged']:,} candidate(s) act on the goal's own readout: flagged 'readout'"
                   + (" and ranked last" if strategy in ("information", "mix", "discovery") else "")
                   + f" ({', '.join(a['flagged'][:5])}{', …' if a['n_flagged'] > 5 else ''})")
    for row in table.head(10).itertuples(index=False):
        typer.echo(f"  {row.rank}. {row.perturbation} ({row.kind})  score {row.strategy_score:.3g}"
                   + (f"  [{row.flag}]" if row.flag else ""))
    typer.echo(f"wrote {csv_path}")
    typer.echo(f"wrote {html_path}")


# ------------------------------------------------------------------------------------- evaluate
@app.command("evaluate")
@_command
def evaluate_cmd(
    model_dir: Annotated[Path, typer.Argument(help="A model (or ensemble) folder written by 'bioworld train'.")],
    data: Annotated[Path, typer.Option("--data", metavar="TEST.h5ad", help="Held-out cells: controls and perturbed cells on the model's genes (counts or log as trained).")],
    perturbation_key: Annotated[Optional[str], typer.Option(help="obs column with perturbation labels (default: the model's).")] = None,
    control: Annotated[Optional[str], typer.Option(help="Label of unperturbed cells (default: the model's).")] = None,
    dose_key: Annotated[Optional[str], typer.Option(help="obs column with the dose; with bare compound names, NAME@DOSE labels are built.")] = None,
    compound_id_key: Annotated[Optional[str], typer.Option(help="obs column with compound ids.")] = None,
    gene_symbols_key: Annotated[Optional[str], typer.Option(help="var column with gene symbols, if var_names are not symbols.")] = None,
    input: Annotated[Optional[str], typer.Option("--input", help="'counts' or 'log' (default: as the model was trained).")] = None,
    min_cells: Annotated[Optional[int], typer.Option("--min-cells", min=1, help="Perturbations with fewer test cells are not scored (default: 1).")] = None,
    train_data: Annotated[Optional[Path], typer.Option("--train-data", metavar="TRAIN.h5ad", help="The training data: the MeanOfTrain baseline is then the mean of its observed deltas.")] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Top-k DE genes for mse_top{k} / pearson_top{k} / direction_top{k}.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the split halves of the noise ceiling.")] = 0,
    layer: LayerOption = None,
) -> None:
    """Score a model on held-out data: benchmark metrics vs baselines and the split-half noise ceiling.

    Writes evaluation.csv (split, method, metric, mean, sd, n) and evaluation_scores.csv (per
    perturbation) into MODEL_DIR, where reports and the model card read them, and prints the table.
    """
    from bioworld.data import read_h5ad
    from bioworld.eval._evaluate import EVALUATION, evaluate, format_evaluation

    wm = _load_model(model_dir)
    test = read_h5ad(data, layer=layer)
    train = read_h5ad(train_data, layer=layer) if train_data is not None else None
    summary = evaluate(wm, test, perturbation_key=perturbation_key, control=control, dose_key=dose_key,
                       compound_id_key=compound_id_key, gene_symbols_key=gene_symbols_key, input=_check_input(input),
                       min_cells_per_group=min_cells, train_data=train, k=k, seed=seed, out=model_dir)  # + model card
    typer.echo(f"scored {summary.attrs['n_perturbations']} perturbation(s) on {summary.attrs['n_test_cells']:,} test "
               f"cells of {data}")
    typer.echo(format_evaluation(summary))
    for note in summary.attrs["notes"]:
        typer.echo(f"  {note}")
    typer.echo(f"wrote {model_dir / EVALUATION}")


# ------------------------------------------------------------------------------------ benchmark
@app.command("benchmark")
@_command
def benchmark_cmd(
    full: Annotated[bool, typer.Option("--full/--quick", help="Full settings (5 folds, 3 seeds, default steps, ablations; hours) or quick ones (default: minutes).")] = False,
    only: Annotated[str, typer.Option("--only", help="Comma-separated subset of papalexi,l1000,simulator,retrospective (retrospective: held-out perturbations ranked by 'prioritize' vs network / pathway / random baselines).")] = "papalexi,l1000,simulator,retrospective",
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder for the CSVs, plots and pred/real AnnData pairs.")] = Path("benchmarks/results"),
    report: Annotated[Optional[Path], typer.Option("--report", metavar="FILE.md", help="Markdown report to write (default: OUT/BENCHMARKS.md).")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Comma-separated model / split seeds, e.g. '0,1' (overrides the mode).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="WorldModel max_steps (overrides the mode).")] = None,
    folds: Annotated[Optional[int], typer.Option("--folds", min=2, help="Papalexi leave-targets-out folds (overrides the mode).")] = None,
    ablations: Annotated[Optional[bool], typer.Option("--ablations/--no-ablations", help="Also train the mask_mode ablations on Papalexi (default: only with --full).")] = None,
    world_model: Annotated[bool, typer.Option("--world-model/--no-world-model", help="--no-world-model: baselines and noise ceilings only.")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    keep_earlier: Annotated[bool, typer.Option("--keep-earlier", help="Keep the tables of benchmarks not in --only from their earlier run in --out (marked with its date and command).")] = False,
) -> None:
    """Regenerate the accuracy benchmark (BENCHMARKS.md, CSVs, plots) against baselines and the noise ceiling.

    Same as ``python benchmarks/run_benchmarks.py`` with the same options; e.g.
    ``bioworld benchmark --quick --only papalexi --report BENCHMARKS.md``.
    """
    from bioworld.eval.benchmark import main as bench_main

    argv = ["--full" if full else "--quick", "--only", only, "--out", str(out)]
    for flag, value in (("--report", report), ("--seeds", seeds), ("--steps", steps), ("--folds", folds)):
        if value is not None:
            argv += [flag, str(value)]
    if ablations is not None:
        argv.append("--ablations" if ablations else "--no-ablations")
    if not world_model:
        argv.append("--no-world-model")
    if not progress:
        argv.append("--no-progress")
    if keep_earlier:
        argv.append("--keep-earlier")
    bench_main(argv, prog="bioworld benchmark")


# ---------------------------------------------------------------------------------- entry point
#: Seconds between progress-bar updates when stderr is a file or a pipe (a log), not a terminal
LOG_PROGRESS_INTERVAL = "10"


def _progress_for_logs(stream: Any = None) -> None:
    """When ``stream`` (default stderr) is not a terminal, progress bars redraw every
    :data:`LOG_PROGRESS_INTERVAL` seconds instead of ten times a second (tqdm's ``TQDM_MININTERVAL``), so a run
    written to a log file stays readable; a value the user set is kept."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()):
        os.environ.setdefault("TQDM_MININTERVAL", LOG_PROGRESS_INTERVAL)


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point (``bioworld = "bioworld.cli:main"``). A command line the parser refuses (a missing
    argument, an option value of the wrong type or range, an unknown command or option) is one ``error:`` line
    naming the command and its help, exit 2, like every other user error (not click's boxed usage text)."""
    try:  # typer >= 0.20 vendors click; earlier versions use click itself
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click import exceptions as cx

    _progress_for_logs()
    try:
        rc = app(args=argv, prog_name="bioworld", standalone_mode=False)
    except cx.NoArgsIsHelpError as exc:  # a bare command: its help, as before
        exc.show()
        sys.exit(exc.exit_code)
    except cx.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx is not None else "bioworld"
        message = " ".join(exc.format_message().split()).rstrip(".")  # one line
        typer.echo(f"error: {cmd}: {message}. Fix: see '{cmd} -h' for the arguments and options it takes", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    except cx.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
