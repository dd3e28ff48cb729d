"""Data layer: bundled datasets, loaders, registration + validation, splits, simulator, collator.

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
        "format_registration": "._register",
        "DataWarning": "._register",
        # splits
        "Split": "._splits",
        "leave_targets_out": "._splits",
        "unseen_combinations": "._splits",
        "unseen_compounds": "._splits",
        "unseen_doses": "._splits",
        # simulator
        "simulate": "._simulate",
        "SimulationResult": "._simulate",
    },
)
