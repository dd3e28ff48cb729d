"""Data layer: bundled datasets, loaders, registration + validation, simulator, collator.

Imports nothing from ``bioworld.model``; exported names are imported lazily.
"""

from bioworld._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        # bundled files + loaders
        "bundled_path": "._bundled",
        "verify_bundled": "._bundled",
        "load_papalexi": "._io",
        "load_l1000": "._io",
        "read_gears": "._io",
        "read_h5ad": "._io",
        "use_layer": "._io",
        "compound_labels": "._io",
        "has_bare_names": "._io",
        "format_dose": "._io",
        "open_backed": "._backed",
        "write_h5ad_chunks": "._backed",
        # registration / validation
        "register": "._register",
        "Registration": "._register",
        "normalize": "._register",
        "get_registration": "._register",
        "format_registration": "bioworld.actions._summary",  # compatibility alias (needs the action grammar)
        "DataWarning": "._register",
        # splits: compatibility aliases of bioworld.actions (splitting by target needs the action grammar)
        "Split": "bioworld.actions._splits",
        "leave_targets_out": "bioworld.actions._splits",
        "unseen_combinations": "bioworld.actions._splits",
        "unseen_compounds": "bioworld.actions._splits",
        "unseen_doses": "bioworld.actions._splits",
        # observed effects
        "mean_deltas": "._deltas",
        "top_de_genes": "._deltas",
        # simulator
        "simulate": "._simulate",
        "SimulationResult": "._simulate",
    },
)
