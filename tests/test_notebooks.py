"""The example notebooks in ``notebooks/`` run end to end (few training steps) and show their figures.

Each notebook is executed with nbclient in a fresh ``python3`` kernel with
``BIOWORLD_NB_STEPS=30`` (a barely trained model: only that the analysis runs is checked, not
its numbers). The executed copy is kept in the test's temporary folder, never written back.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
STEPS = "30"
TIMEOUT_S = 600

#: notebook -> (markdown headings that must be present, minimum number of figures,
#:              strings the executed outputs must contain)
EXPECTED = {
    "01_quickstart.ipynb": (
        ["# 01 · Quickstart", "## 2. Train with STAT1 held out", "## 4. Held-out STAT1: predicted vs observed",
         "## 5. Save and reload", "## 6. A counterfactual on individual cells", "## 7. How far to trust a prediction"],
        6,
        ["Pearson r with the observed STAT1-KO effect", "mean of training KOs", "reloaded predictions identical: True",
         "entity", "inside the 90% interval", "'calibrated': True"],
    ),
    "02_thp1_ifng_pathways.ipynb": (
        ["# 02 · Which pathways control", "## 1. Observed entity score shifts per knockout",
         "## 2. Silence each entity in control cells", "## 3. Do the silencings resemble"],
        4,
        ["readout:", "Pearson r between predicted and observed", "mean of training KOs (baseline)",
         "silence:JAK-STAT"],
    ),
    "03_l1000_dose_response_mapk.ipynb": (
        ["# 03 · L1000 dose-response", "## 1. Dose-response with one dose held out", "## 2. An unseen compound",
         "## 3. `silence:MAPK` on DMSO wells"],
        4,
        ["unseen compound:", "r(model, observed)", "r(same-dose mean, observed)", "r(silence:MAPK)"],
    ),
    "04_target_prioritization.ipynb": (
        ["# 04 · Target prioritisation", "## 1. Rank interventions", "## 2. Effect sizes with intervals",
         "## 3. Pair synergy", "## 4. HTML report"],
        3,
        ["goal down:HALLMARK_INTERFERON_GAMMA_RESPONSE", "Most synergistic pairs", "score_lo"],
    ),
    "05_world_knowledge.ipynb": (
        ["# 05 · A world model that knows the world", "## 1. Train with IRF1 and STAT2 held out",
         "## 2. Genes and drugs nobody measured here", "## 3. A drug, to a model of gene perturbations",
         "## 4. The same drug in other cell lines", "## 5. Which experiment next?"],
        4,
        ["predicted IFN-γ score change", "Pearson r with the observed held-out knockout effect",
         "ruxolitinib@1 == loss of JAK1+JAK2+JAK3+TYK2: True", "correlation of trametinib's predicted signatures",
         "CompoundPlusContext", "expected uncertainty reduction"],
    ),
}


def test_every_notebook_is_covered():
    found = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert found == sorted(EXPECTED), f"notebooks {found} vs tested {sorted(EXPECTED)}"


@pytest.fixture(scope="module")
def python3_kernel():
    """Make sure a ``python3`` kernel spec exists (register this interpreter's ipykernel if not)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", "python3"],
                       check=True, capture_output=True)
    return "python3"


def _outputs_text(nb) -> tuple[str, int]:
    """All text of the executed code cells' outputs, and the number of image outputs."""
    texts, n_images = [], 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                texts.append(out.get("text", ""))
            data = out.get("data", {})
            if "image/png" in data or "image/svg+xml" in data:
                n_images += 1
            for key in ("text/plain", "text/html"):
                if key in data:
                    texts.append(data[key] if isinstance(data[key], str) else "".join(data[key]))
    return "\n".join(texts), n_images


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs(name, python3_kernel, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOWORLD_NB_STEPS", STEPS)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # model folders / reports the notebooks write go here
    path = NOTEBOOK_DIR / name
    nb = nbformat.read(path, as_version=4)
    headings, min_figures, strings = EXPECTED[name]
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for h in headings:
        assert h in markdown, f"{name}: heading {h!r} missing"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert 'os.environ.get("BIOWORLD_NB_STEPS"' in code

    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name=python3_kernel,
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:  # the message holds the cell and its traceback
        pytest.fail(f"{name}: a cell raised\n{exc}")
    finally:
        nbformat.write(nb, tmp_path / name)
    wall = time.perf_counter() - t0
    print(f"{name}: executed in {wall:.1f} s")

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{name}: error outputs {[(e['ename'], e['evalue']) for e in errors]}"
    text, n_images = _outputs_text(nb)
    assert n_images >= min_figures, f"{name}: {n_images} figures in the outputs, expected >= {min_figures}"
    for s in strings:
        assert s in text, f"{name}: expected {s!r} in the executed outputs"
    assert "Traceback" not in text
