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
* For the same reason XLA's CPU backend emits fused loops with its classic emitters
  (``--xla_cpu_use_fusion_emitters=false``) rather than the newer MLIR ones, which
  take about twice as long to compile the suite's programs (the whole suite: 40% less
  CPU time); the suite's exact comparisons hold either way. Only where this XLA knows
  the flag (an unknown one in ``XLA_FLAGS`` stops JAX from starting), asked of a child
  process once; a setting given in ``XLA_FLAGS`` is kept.
* JAX's persistent compilation cache, in a folder of this run's own (empty at the
  start, removed at the end): the processes the tests start (scripts, experiment
  children, the float32 optax run, sharded sweeps) compile many of the programs the
  suite or a sibling compiled already, and read them from there instead. It only
  skips compiling a program XLA has compiled for this run; a
  ``JAX_COMPILATION_CACHE_DIR`` given is kept.
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile


def _add_xla_flag(name, value, probe=False):
    """Appends ``--name=value`` to XLA_FLAGS unless ``name`` is there already; with
    ``probe``, only if a child process starts JAX with it."""
    flags = os.environ.get("XLA_FLAGS", "")
    if name in flags:
        return
    flags = f"{flags} --{name}={value}".strip()
    if probe:
        env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
        started = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"],
                                 env=env, capture_output=True, timeout=300)
        if started.returncode != 0:
            return
    os.environ["XLA_FLAGS"] = flags


_add_xla_flag("xla_backend_optimization_level", 1)
_add_xla_flag("xla_cpu_use_fusion_emitters", "false", probe=True)

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # in the environment: children share it
    _cache = tempfile.mkdtemp(prefix="funcnn-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads it when it starts)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
