"""lt_utils: the library behind the latent-thoughts study.

Every notebook in ``notebooks/`` is a thin driver over these modules; the logic
(and its tests) lives here.  Kept free of heavy imports so ``import lt_utils``
is instant.

Layout (README, "Architecture"): the method's core sits at the top level
(config, runs, tokens, model, data, train, sample, estep, evaluate, teacher, ...);
the entry points ``pipeline``, ``figures``, ``benchmark`` and ``fault_sweep`` sit
beside it; ``world/`` is the synthetic world, ``stages/`` holds one module per
notebook and the pieces they are built from (the base model, the claims table,
the loop-gain map), ``paper/`` the adapters only the paper-scale path needs,
``report/`` the figures.
The core never imports ``stages/``, ``paper/`` or ``report/``
(``tests/test_architecture.py``).
"""

__version__ = "0.1.0"
