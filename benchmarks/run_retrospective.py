"""Retrospective validation of target prioritisation (issue 14): Papalexi and L1000, 3 seeds.

Held-out perturbations are ranked among every unseen candidate for a goal by a WorldModel trained
without them, and against network proximity, pathway membership and random rankings
(:mod:`bioworld.eval.retrospective` defines hits, metrics and baselines). Writes
``benchmarks/results/retrospective/RETROSPECTIVE.md``, ``items.csv``, ``summary.csv``,
``retrospective.png`` and, with ``--benchmarks-md BENCHMARKS.md``, its section of BENCHMARKS.md.

    python benchmarks/run_retrospective.py [--seeds 0,1,2] [--folds 4] [--steps 150] [--benchmarks-md BENCHMARKS.md]
"""

from bioworld.eval.retrospective import main

if __name__ == "__main__":
    raise SystemExit(main())
