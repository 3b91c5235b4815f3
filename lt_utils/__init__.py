"""lt_utils: the library behind the latent-thoughts study.

Every notebook in ``notebooks/`` is a thin driver over these modules; the logic
(and its tests) lives here.  Kept free of heavy imports so ``import lt_utils``
is instant.
"""

__version__ = "0.1.0"
