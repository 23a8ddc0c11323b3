"""Test configuration shared by every test module.

* float64 is enabled so hand-derived gradients can be compared with jax.grad to ~1e-12.
* ``jax_numpy_rank_promotion="raise"``: implicit broadcasting of arrays of different
  rank raises, which catches the shape slips that hand-written backprop invites.
* XLA's CPU backend compiles at LLVM optimisation level 1, not its default. The suite's
  programs are tiny and each runs once or a few times, so compiling dominates its time
  (a threefry ``normal`` for one new shape alone takes seconds to optimise fully); level 1
  compiles several times faster and still computes the same bits in the suite's exact
  comparisons (level 0, ``jax_disable_most_optimizations``, does not: it changes
  rounding). Set here, in ``XLA_FLAGS``, before JAX starts its backend, so subprocesses
  the tests start inherit it. Run fully optimised with e.g.
  ``XLA_FLAGS=--xla_backend_optimization_level=3 pytest``: a level given is kept.
"""

import os

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=1").strip()

import jax  # after XLA_FLAGS (the backend reads it when it starts)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
