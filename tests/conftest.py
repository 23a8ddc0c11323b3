"""Test configuration shared by every test module.

* float64 is enabled so hand-derived gradients can be compared with jax.grad to ~1e-12.
* ``jax_numpy_rank_promotion="raise"``: implicit broadcasting of arrays of different
  rank raises, which catches the shape slips that hand-written backprop invites.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
