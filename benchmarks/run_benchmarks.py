"""Run bioworld's benchmarks (world model vs baselines on held-out perturbations).

    python benchmarks/run_benchmarks.py --quick                    # minutes
    python benchmarks/run_benchmarks.py --full --report BENCHMARKS.md
    python benchmarks/run_benchmarks.py --quick --only papalexi --out benchmarks/results

All logic lives in :mod:`bioworld.eval.benchmark`; this script only calls its ``main``.
"""

import sys

from bioworld.eval.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
