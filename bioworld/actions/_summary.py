"""A human summary of a registration: its perturbations grouped by kind (needs the action grammar)."""

from __future__ import annotations

from bioworld.actions._parse import parse_action
from bioworld.data._register import Registration
from bioworld.errors import preview as _preview


def format_registration(reg: Registration) -> str:
    """Human summary of a registration (used by ``bioworld inspect``)."""
    singles, combos, other = [], [], []
    compound_doses: dict[str, set[float]] = {}
    for label in reg.perturbations:
        action = parse_action(label)
        comps = action.components
        if len(comps) > 1:
            combos.append(label)
        elif comps and comps[0].kind == "compound":
            compound_doses.setdefault(comps[0].target, set()).add(
                float("nan") if comps[0].dose is None else float(comps[0].dose))
        elif comps and comps[0].kind in ("ko", "kd", "act"):
            singles.append(label)
        else:
            other.append(label)
    unit = reg.obs_unit
    lines = [
        f"{reg.n_cells:,} {unit} x {reg.n_genes:,} genes (input: {reg.input}; labels in "
        f"obs[{reg.perturbation_key!r}])",
        f"control {reg.control!r}: {reg.control_n_cells:,} {unit}",
    ]
    parts = []
    if singles:
        parts.append(f"{len(singles)} genetic single targets")
    if combos:
        parts.append(f"{len(combos)} combinations")
    if compound_doses:
        per_compound = [len(d) for d in compound_doses.values()]
        top = max(per_compound)
        n_fewer = sum(n < top for n in per_compound)
        all_doses = sorted({d for ds in compound_doses.values() for d in ds})
        notes = [f"{n_fewer} with fewer"] if n_fewer else []
        notes += [f"{sum(per_compound)} compound-dose groups",
                  "doses " + ", ".join(f"{d:g}" for d in all_doses)]
        parts.append(f"{len(compound_doses)} compounds x {top} doses ({'; '.join(notes)})")
    if other:
        parts.append(f"{len(other)} other ({_preview(other, 3)})")
    lines.append(f"{len(reg.perturbations)} perturbations + control: " + ("; ".join(parts) or "none"))
    if reg.perturbations:
        smallest = sorted(reg.perturbations.items(), key=lambda kv: (kv[1], kv[0]))[:3]
        lines.append("smallest groups: " + ", ".join(f"{k} ({v:,})" for k, v in smallest))
    if reg.dropped:
        lines.append(f"set aside: {len(reg.dropped)} groups ({_preview(reg.dropped, 5)})")
    if reg.findings:
        lines.append("findings:")
        lines += [f"  - {f}" for f in reg.findings]
    return "\n".join(lines)
