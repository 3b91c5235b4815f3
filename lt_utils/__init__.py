"""lt_utils: the library behind the latent-thoughts study.

Every notebook in ``notebooks/`` is a thin driver over these modules; the logic
(and its tests) lives here.  Kept free of heavy imports so ``import lt_utils``
is instant.

Layout, by role (README, "Architecture"): the method sits at the top level
(tokens, model, data, train, sample, estep, em_plan, fidelity, evaluate, teacher, ...);
``world/`` is the synthetic world; ``runtime/`` the plumbing (params, run directories,
caches, locks, workers); ``stages/`` backs the notebooks; ``paper/`` holds the adapters
only the paper-scale path needs; ``report/`` turns stored runs into tables, claims and
figures; ``sweeps/`` run many stage-03 configurations; ``cli/`` holds the entry points.
Imports point down that list in reverse (``tests/test_architecture.py``).
"""

__version__ = "0.1.0"
