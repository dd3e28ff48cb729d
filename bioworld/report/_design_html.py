"""``design.csv`` + ``design.html``: the experiments :func:`bioworld.design` proposes, as a table and a
short self-contained HTML section (no scripts, no external files)."""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

DESIGN_CSV = "design.csv"
DESIGN_HTML = "design.html"

_STRATEGY_TEXT = {
    "mix": "expected information (members' disagreement, batch kept diverse) and expected goal value with an "
           "optimism bonus, combined by rank",
    "information": "expected reduction of the model's uncertainty over all candidates (members' disagreement), "
                   "each pick discounting candidates that ask the same question",
    "discovery": "expected goal value plus an optimism bonus (UCB over the members), discounting look-alikes",
    "error": "expected error of the model (the true size expected from the measured look-alikes against the "
             "predicted one, plus the members' disagreement), spread over the knowledge features by rank",
    "knowledge": "baseline: farthest-first coverage of the knowledge features (no model)",
    "random": "baseline: random order",
}


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.4g}"
    return html.escape(str(v))


def design_html(table: pd.DataFrame, *, model_name: str = "") -> str:
    """One HTML page (a ``<section>`` with a title, what was done and the ranked table)."""
    a = table.attrs
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
                   for row in table.itertuples(index=False))
    excluded = a.get("excluded_measured") or []
    notes = [
        f"Strategy <b>{html.escape(str(a.get('strategy', '')))}</b>: "
        f"{html.escape(_STRATEGY_TEXT.get(str(a.get('strategy')), ''))}.",
        f"Goal: {html.escape(str(a.get('goal') or 'none'))}. Chosen {len(table)} of {a.get('n_candidates', '?')} "
        f"candidates not yet measured" + (f" ({len(excluded)} candidates were already measured and left out)"
                                           if excluded else "") + ".",
        f"Uncertainty: {html.escape(str(a.get('uncertainty', '')))}; predictions on {a.get('n_cells', '?')} reference "
        "control cells.",
    ]
    if a.get("n_flagged"):
        notes.append(f"Tautology guard: {a['n_flagged']} candidate(s) act on the goal's own readout (flag 'readout'); "
                     "strategies that use the goal rank them after every unflagged candidate.")
    title = "Which experiments next" + (f": {html.escape(model_name)}" if model_name else "")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>bioworld design</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;font-size:.9em}"
            "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}"
            "</style></head><body><section id='design'>"
            f"<h2>{title}</h2>" + "".join(f"<p>{n}</p>" for n in notes)
            + f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section></body></html>\n")


def write_design(table: pd.DataFrame, out: str | os.PathLike, *, model_name: str = "") -> tuple[Path, Path]:
    """Write ``out/design.csv`` and ``out/design.html`` together (all or nothing); returns both paths."""
    from bioworld._atomic import write_files
    from bioworld.report.html import csv_safe

    out = Path(out)
    csv_text = csv_safe(table).to_csv(index=False)
    page = design_html(table, model_name=model_name)
    write_files([(out / DESIGN_CSV, lambda tmp: Path(tmp).write_text(csv_text, encoding="utf-8")),
                 (out / DESIGN_HTML, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))], what="design file")
    return out / DESIGN_CSV, out / DESIGN_HTML
