"""A seeded synthetic "compressed math" world.

Web text is the compressed outcome of a verbose thought process: a document
states results and leaves out the steps.  This package writes such a world.
Each *unit* is a problem with its answer; a *document* is a few units.  For
every unit the world also knows the ground-truth latent derivation (the
*thought*) behind the stated answer, and :func:`verify` can check any
derivation text (for example one sampled from a model) against the problem.

Modules
-------
* :mod:`.units` -- units, documents, verdicts, the text format, the thought
  grammar (the derivation builder) and the thought styles.
* :mod:`.family` -- the :class:`Family` protocol and shared helpers.
* :mod:`.arithmetic`, :mod:`.algebra`, :mod:`.conversion`, :mod:`.word` -- the
  seven families and the details of their derivations.
* :mod:`.registry` -- :data:`FAMILIES`, :data:`DEFAULT_DIFFICULTY`,
  :func:`instance_space_size`.
* :mod:`.splits` -- hash-based splits, :func:`generate_documents`,
  :func:`generate_problems`, :func:`split_pool_size`.
* :mod:`.verifier` -- :func:`parse_question` and :func:`verify`.

Families, their difficulty knob, and instance-space sizes
---------------------------------------------------------
Sizes are exact (:func:`instance_space_size`); "eval" is about 5% of them.

* ``addition`` -- d-digit + d-digit (d in 1..9; default 3: 810,000).
  ``7+6=13 c1. 4+8+1=13 c1. 3+5+1=9. so 933.``
* ``subtraction`` -- d-digit - d-digit, result >= 0 (d in 1..9; default 3:
  405,450).  ``12-7=5 b1. 13-1-8=4 b1. 5-1-1=3. so 345.``
* ``multiplication`` -- d-digit x 1-digit multiplier 2..9 (d in 1..6;
  default 2: 720); ``10+d`` (11..16) means d-digit x 2-digit (partial
  products, then one addition of the shifted partials).
  ``7*6=42 c4. 4*6+4=28. so 282.``
* ``word`` -- number of arithmetic operations (1..6; default 2: 92,778,498).
  ``3*5=15. 12+15=27. so 27.``
* ``linear`` -- coefficient ranges ``a`` in 2..10d-1, ``x`` in 0..12d, ``b`` in
  0..20d (d in 1..5; default 1: 5,895).  ``19-4=15. 15/3=5. so 5.``
* ``remainder`` -- digits of the dividend, divisor 2..9 (d in 1..9; default 3:
  7,200).  ``34: 6*5=30. 34-30=4. 47: 6*7=42. 47-42=5. so 5.``
* ``conversion`` -- multiplier range 2..10**d-1 over 20 unit pairs (d in
  1..4; default 1: 160).  ``a day has 24 hours. 4*3=12 c1. 2*3+1=7. so 72.``

Thought length: at default difficulty a thought has 0.2-1.1 times the
characters of its unit's raw text (word problems are the shortest relative to
their text, conversions the longest).
"""

from lt_utils.world.units import THOUGHT_STYLES, Document, Unit, Verdict, eval_prompt, eval_target, render_unit
from lt_utils.world.family import Family
from lt_utils.world.registry import DEFAULT_DIFFICULTY, FAMILIES, instance_space_size
from lt_utils.world.splits import SPLIT_FRACTIONS, SPLITS, generate_documents, generate_problems, split_of, split_pool_size
from lt_utils.world.verifier import parse_question, verify
from lt_utils.world.word import _FRAMES, _Word  # noqa: F401  (reached by tests/test_world.py)

__all__ = [
    "DEFAULT_DIFFICULTY",
    "Document",
    "FAMILIES",
    "Family",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "THOUGHT_STYLES",
    "Unit",
    "Verdict",
    "eval_prompt",
    "eval_target",
    "generate_documents",
    "generate_problems",
    "instance_space_size",
    "parse_question",
    "render_unit",
    "split_of",
    "split_pool_size",
    "verify",
]
