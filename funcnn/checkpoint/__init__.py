"""Checkpoints: save and load any pytree as one verified ``.npz`` file, never pickle.

A checkpoint is a plain zip archive (readable by ``np.load(..., allow_pickle=False)``
and by ``unzip``) holding, uncompressed:

* ``__funcnn__.json`` first, so a file says what it is in its first bytes: format
  name and version, the tree structure as text (for error messages only), one
  record per leaf (path, member, kind, shape, dtype, PRNG impl, sha256 of the raw
  bytes), the user's metadata, and a sha256 over all of the above;
* one ``.npy`` member per leaf, named after the leaf's tree path
  (``jax.tree_util.keystr``, e.g. ``['params'].w.npy``; a lone root leaf is ``<root>``);
* as the zip comment, the file's last bytes: ``funcnn-sha256:`` and 64 hex digits,
  the sha256 of the whole file with those digits read as ``0``.

Leaf kinds:

* ``"array"``: any numeric array (jax or numpy). Python scalars (``int``, ``float``,
  ``bool``) are stored as 0-d arrays with numpy's dtype for them (int64, float64,
  bool) and come back as arrays. Extension dtypes such as bfloat16 are stored as
  unsigned-integer views of their bits and restored by dtype name.
* ``"key"``: a typed PRNG key array (``jax.random.key``); stored as
  ``jax.random.key_data`` plus the impl name, and loaded back as a typed key.

Loading (:func:`load`, :func:`load_metadata`, :func:`read`) reads the file once and
checks the whole-file sha256 before parsing any of it, so a damaged file (one flipped
bit anywhere, a truncated copy) is refused with :class:`CheckpointError` and never
parsed; version 1 files, written before the whole-file sha256, are checked by their
header checksum, zip CRCs and per-leaf sha256s. Loading never narrows: with
``jax_enable_x64`` off, a 64-bit leaf that jax would turn into 32 bits (2**40 into 0)
raises :class:`NarrowingError` instead.

Saving (:func:`save`) is atomic: a temporary file ``.<name>.<12 hex>.tmp`` in the
target folder is written, fsynced and ``os.replace``-d onto the target, so a crash
leaves either the old checkpoint or the new one, never half of one. A temporary file
of that exact name left by a save that was killed is removed by the next save to the
same path.

Modules (imports go one way, down this list):

- ``errors``: :class:`CheckpointError` and its subclasses.
- ``fileformat``: the format's constants, leaf encoding, header and whole-file sha256.
- ``writing``: :func:`save`.
- ``reading``: :func:`load`, :func:`load_metadata`, :func:`read`.
- ``folders``: a run's checkpoints, one per step: :func:`save_step`, :func:`steps`,
  :func:`latest`.
"""

from .errors import CheckpointError, CheckpointVersionError, NarrowingError
from .fileformat import FORMAT, HEADER, VERSION
from .folders import latest, save_step, steps
from .reading import load, load_metadata, read
from .writing import save

__all__ = ["save", "load", "load_metadata", "read", "save_step", "steps", "latest",
           "CheckpointError", "NarrowingError", "CheckpointVersionError", "FORMAT",
           "VERSION", "HEADER"]
