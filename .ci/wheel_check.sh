#!/usr/bin/env bash
# Wheel check: build the wheel, install it into a fresh venv OUTSIDE the checkout and run the CLI
# and the README's Python snippet from another folder, so nothing can come from the source tree.
#
#   bash .ci/wheel_check.sh            # from the repository root (or anywhere: it finds the root)
#
# Uses a plain venv (no --system-site-packages): torch==2.13.0 comes from the pinned CPU wheel
# through constraints.txt like every other dependency.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/bioworld-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
step() { printf '\n[wheel-check] %s\n' "$*"; }

step "building the wheel from $ROOT"
# from a copy of what the wheel is built from: no build/ folder in the checkout, no stale files in the wheel
mkdir -p "$WORK/src"
cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/bioworld" "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
python -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/bioworld-*.whl)"
python - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["bioworld/_data/SHA256SUMS", "bioworld/_data/perturbseq/papalexi2021_thp1_ko.h5ad",
        "bioworld/_data/genesets/msigdb_hallmark_h.all.v7.0.symbols.gmt",
        "bioworld/report/templates/report.html.j2"]
missing = [n for n in need if n not in names]
assert not missing, f"wheel lacks {missing}"
assert not any(n.startswith(("tests/", "benchmarks/", "notebooks/")) for n in names), "wheel carries repo folders"
print(f"{sys.argv[1]}: {len(names)} files, package data present")
EOF

step "installing it into a fresh venv ($WORK/venv)"
python -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q -c "$ROOT/constraints.txt" "$WHEEL" 2> "$WORK/pip.err" || { cat "$WORK/pip.err"; exit 1; }
BW="$WORK/venv/bin/bioworld"

mkdir -p "$WORK/run"
cd "$WORK/run"
unset PYTHONPATH
"$VPY" - "$ROOT" <<'EOF'
import sys, pathlib, bioworld
where = pathlib.Path(bioworld.__file__).resolve()
root = pathlib.Path(sys.argv[1]).resolve()
assert root not in where.parents, f"bioworld imported from the checkout: {where}"
print(f"bioworld {bioworld.__version__} from {where.parent}")
EOF

step "bioworld --version / inspect l1000"
"$BW" --version
"$BW" inspect l1000 > inspect.txt  # (not piped into head: pipefail would see SIGPIPE)
head -n 4 inspect.txt

step "bioworld simulate"
"$BW" simulate --out sim --n-cells-per-condition 20

step "bioworld train --max-steps 5"
"$BW" train sim/train.h5ad --entities sim/pathways.gmt --holdout P1_DRV1 --out model --max-steps 5 --restarts 0 --quiet

step "bioworld predict"
"$BW" predict model --perturbations control,P1_DRV1,P2_DRV1+P3_DRV1 --out pred.h5ad

step "bioworld counterfactual"
"$VPY" -c "
import anndata as ad
a = ad.read_h5ad('sim/train.h5ad')
a[a.obs['perturbation'] == 'control'][:40].copy().write_h5ad('cells.h5ad')
"
"$BW" counterfactual model --cells cells.h5ad --intervention silence:SIM_P1 --intervention P2_DRV1 --out cf.h5ad

step "bioworld prioritize (report without a checkout)"
"$BW" prioritize model --cells cells.h5ad --goal down:SIM_P3 --genes P1_DRV1,P2_DRV2 --no-pairs --out report
grep -q "unvalidated\|held-out" report/report.html

step "bioworld evaluate (a held-out file)"
"$VPY" -c "
import anndata as ad
a = ad.read_h5ad('sim/train.h5ad')
a[a.obs['perturbation'].isin(['control', 'P1_DRV1'])].copy().write_h5ad('test.h5ad')
"
"$BW" evaluate model --data test.h5ad

step "the raw L1000 plate: name + dose columns -> compound@dose actions (--dose-key)"
"$VPY" -c "
import anndata as ad, bioworld as bw
a = bw.data.load_l1000()
raw = ad.AnnData(X=a.X, obs=a.obs.drop(columns=['perturbation']), var=a.var)  # as the plate is stored: no bioworld columns
raw.write_h5ad('plate.h5ad')
"
"$BW" train plate.h5ad --perturbation-key pert_iname --control DMSO --dose-key pert_dose --compound-id-key pert_id \
  --input log --min-cells 1 --out plate_model --max-steps 5 --restarts 0 --quiet
"$BW" predict plate_model --perturbations "PD-0325901@10,PD-0325901@1.1" --out plate_pred.h5ad
"$VPY" -c "
import anndata as ad
p = ad.read_h5ad('plate_pred.h5ad')
assert list(p.obs_names) == ['PD-0325901@10', 'PD-0325901@1.1'], list(p.obs_names)
print('compound@dose predictions:', p.shape)
"

step "the README's Python snippet"
"$VPY" - "$ROOT/README.md" > snippet.py <<'EOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
section = text.split("## Python API", 1)[1]
print(re.search(r"```python\n(.*?)```", section, re.S).group(1))
EOF
cat snippet.py
"$VPY" snippet.py 2> snippet.err || { tail -c 4000 snippet.err; exit 1; }
"$VPY" -c "import anndata as ad, glob; print(sorted(glob.glob('*')))"

step "passed: the wheel works outside the checkout"
