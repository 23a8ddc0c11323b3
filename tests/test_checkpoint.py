"""Tests for funcnn.checkpoint: exact roundtrips, every refusal, atomic writes, run-dir helpers."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import dataclasses
import errno
import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import checkpoint as ckpt
from funcnn.checkpoint import CheckpointError


@dataclasses.dataclass(frozen=True)
class Dense:
    w: jax.Array
    b: jax.Array


jax.tree_util.register_dataclass(Dense, data_fields=["w", "b"], meta_fields=[])


class AdamState(NamedTuple):
    count: jax.Array
    mu: dict
    hyper: dict


class TrainState(NamedTuple):
    params: tuple
    opt: AdamState
    step: int
    key: jax.Array


def make_state(seed: int = 0) -> TrainState:
    k1, k2 = jax.random.split(jax.random.key(seed))
    w = jax.random.normal(k1, (3, 4), jnp.float32)
    w = w.at[0, 0].set(jnp.nan).at[0, 1].set(-0.0)  # bit patterns that == would miss
    layer = Dense(w=w, b=jnp.arange(4, dtype=jnp.float64) / 3)
    params = (layer, {"mask": jnp.array([True, False, True]), "idx": jnp.arange(5, dtype=jnp.int32)},
              (), {})  # empty subtrees
    opt = AdamState(count=jnp.array(7, jnp.int32), mu={"w": jnp.zeros((3, 4), jnp.float32)},
                    hyper={"lr": jnp.array(1e-3), "b1": jnp.array(0.9, jnp.float32)})
    return TrainState(params=params, opt=opt, step=seed + 11,
                      key=jax.random.split(jax.random.key(seed + 1), 4))


def bits(x) -> tuple:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return (str(x.dtype), x.shape, np.asarray(jax.random.key_data(x)).tobytes())
    return (str(x.dtype), x.shape, np.asarray(x).tobytes())


def assert_bitwise_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert bits(jnp.asarray(x)) == bits(y)


def rewrite(path: Path, replace: dict) -> None:
    """Rebuild the zip at `path` with some members' bytes replaced (valid zip CRCs)."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members.update(replace)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def edit_header(path: Path, change, fix_checksum: bool = True) -> None:
    with zipfile.ZipFile(path) as zf:
        header = json.loads(zf.read(ckpt.HEADER))
    change(header)
    if fix_checksum:
        header["checksum"] = ckpt._header_checksum(header)
    rewrite(path, {ckpt.HEADER: json.dumps(header).encode()})


# ---------------------------------------------------------------- roundtrips


def test_roundtrip_train_state_is_bitwise_exact(tmp_path):
    state = make_state()
    out = ckpt.save(tmp_path / "s.npz", state)
    assert out == tmp_path / "s.npz"
    back = ckpt.load(out, make_state(seed=5))  # template: same structure, other values
    assert isinstance(back, TrainState) and isinstance(back.params[0], Dense)
    assert back.key.dtype == state.key.dtype and back.key.shape == (4,)
    assert_bitwise_equal(state, back)
    # the rebuilt keys are usable and give the same random numbers
    assert np.array_equal(jax.random.uniform(back.key[2], (3,)), jax.random.uniform(state.key[2], (3,)))


def test_scalars_come_back_as_arrays_and_root_leaf_works(tmp_path):
    tree = {"i": 3, "f": 0.5, "b": True, "z": jnp.zeros((0, 2))}
    back = ckpt.load(ckpt.save(tmp_path / "a.npz", tree), tree)
    assert {k: (v.dtype.name, v.shape) for k, v in back.items()} == {
        "i": ("int64", ()), "f": ("float64", ()), "b": ("bool", ()), "z": ("float64", (0, 2))}
    assert int(back["i"]) == 3 and float(back["f"]) == 0.5 and bool(back["b"])
    single = ckpt.load(ckpt.save(tmp_path / "r.npz", jnp.arange(3.0)), jnp.zeros(3))
    assert np.array_equal(single, [0.0, 1.0, 2.0])
    key = ckpt.load(ckpt.save(tmp_path / "k.npz", jax.random.key(3)), jax.random.key(0))
    assert bits(key) == bits(jax.random.key(3))


def test_bfloat16_and_shape_dtype_struct_template(tmp_path):
    tree = {"h": jnp.array([1.5, -2.25, 3.0], jnp.bfloat16), "k": jax.random.key(1, impl="rbg")}
    path = ckpt.save(tmp_path / "h.npz", tree)
    back = ckpt.load(path, jax.eval_shape(lambda: tree))
    assert_bitwise_equal(tree, back)
    raw = ckpt.read(path)
    assert raw["['h']"].dtype == jnp.bfloat16 and str(raw["['k']"].dtype) == "key<rbg>"


def test_same_tree_gives_identical_bytes(tmp_path):
    a = ckpt.save(tmp_path / "a.npz", make_state(), metadata={"x": 1})
    b = ckpt.save(tmp_path / "b.npz", make_state(), metadata={"x": 1})
    assert a.read_bytes() == b.read_bytes()


def test_metadata_roundtrip_and_errors(tmp_path):
    meta = {"lr": 0.05, "layers": [2, 64, 3], "name": "spiral", "nested": {"ok": True, "none": None}}
    path = ckpt.save(tmp_path / "m.npz", {"a": jnp.ones(2)}, metadata=meta)
    assert ckpt.load_metadata(path) == meta
    assert ckpt.load_metadata(ckpt.save(tmp_path / "n.npz", {})) == {}
    with pytest.raises(TypeError, match="JSON-serialisable"):
        ckpt.save(tmp_path / "bad.npz", {}, metadata={"arr": np.ones(2)})
    with pytest.raises(TypeError, match="must be a dict"):
        ckpt.save(tmp_path / "bad.npz", {}, metadata=[1, 2])
    assert not (tmp_path / "bad.npz").exists()


def test_non_array_leaf_is_refused_naming_its_path(tmp_path):
    with pytest.raises(TypeError, match=r"\['name'\].*str"):
        ckpt.save(tmp_path / "s.npz", {"name": "adam", "w": jnp.ones(2)})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- template mismatches


def test_structure_mismatch_lists_missing_and_unexpected_paths(tmp_path):
    path = ckpt.save(tmp_path / "s.npz", {"a": jnp.ones(2), "b": {"c": jnp.ones(1)}})
    with pytest.raises(CheckpointError, match="structure") as err:
        ckpt.load(path, {"a": jnp.ones(2), "d": jnp.ones(1)})
    msg = str(err.value)
    assert str(path) in msg and "['d']" in msg and "['b']['c']" in msg


def test_shape_dtype_and_kind_mismatches_are_all_reported(tmp_path):
    tree = {"w": jnp.ones((3, 4), jnp.float32), "n": jnp.array(1, jnp.int32), "k": jax.random.key(0)}
    path = ckpt.save(tmp_path / "s.npz", tree)
    template = {"w": jnp.ones((4, 3), jnp.float32), "n": jnp.array(1, jnp.int64), "k": jnp.zeros(2)}
    with pytest.raises(CheckpointError) as err:
        ckpt.load(path, template)
    msg = str(err.value)
    assert "['w']: shape expected (4, 3), got (3, 4)" in msg
    assert "['n']: dtype expected int64, got int32" in msg
    assert "['k']: expected a array leaf, got a key leaf" in msg
    with pytest.raises(CheckpointError, match="dtype expected key<rbg>, got key<fry>"):
        ckpt.load(path, dict(tree, k=jax.random.key(0, impl="rbg")))


# ---------------------------------------------------------------- damaged and foreign files


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        ckpt.load(tmp_path / "nope.npz", {})


@pytest.mark.parametrize("cut", [1, 22, 200, "half"])
def test_truncated_file(tmp_path, cut):
    path = ckpt.save(tmp_path / "s.npz", make_state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if cut == "half" else len(data) - cut])
    with pytest.raises(CheckpointError, match="truncated"):
        ckpt.load(path, make_state())


def test_flipped_byte_in_array_payload_is_detected(tmp_path):
    tree = {"a": jnp.arange(64, dtype=jnp.float64) + 0.125}
    path = ckpt.save(tmp_path / "s.npz", tree)
    data = bytearray(path.read_bytes())
    at = data.find(np.asarray(tree["a"]).tobytes()) + 100
    assert at > 100
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        ckpt.load(path, tree)


def test_changed_array_with_valid_zip_crc_fails_sha256(tmp_path):
    path = ckpt.save(tmp_path / "s.npz", {"a": jnp.ones(4)})
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.full(4, 2.0))
    rewrite(path, {"['a'].npy": buf.getvalue()})
    with pytest.raises(CheckpointError, match=r"\['a'\]: checksum mismatch"):
        ckpt.load(path, {"a": jnp.ones(4)})


def test_edited_header_fails_checksum_and_bad_version_is_named(tmp_path):
    path = ckpt.save(tmp_path / "s.npz", {"a": jnp.ones(4)}, metadata={"lr": 0.1})
    edit_header(path, lambda h: h["metadata"].update(lr=0.2), fix_checksum=False)
    with pytest.raises(CheckpointError, match="header checksum mismatch"):
        ckpt.load_metadata(path)
    edit_header(path, lambda h: h.update(version=99))
    with pytest.raises(CheckpointError, match="unsupported format version 99"):
        ckpt.load(path, {"a": jnp.ones(4)})


def test_foreign_files_are_not_checkpoints(tmp_path):
    text = tmp_path / "t.npz"
    text.write_text("hello, not a zip")
    np.savez(tmp_path / "plain.npz", a=np.ones(3))
    np.save(tmp_path / "one.npy", np.ones(3))
    for path in (text, tmp_path / "plain.npz", tmp_path / "one.npy"):
        with pytest.raises(CheckpointError, match="not a funcnn checkpoint") as err:
            ckpt.load(path, {"a": jnp.ones(3)})
        assert str(path) in str(err.value)


class _Trap:
    """Unpickling this object creates the marker file: proof that pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _object_npy(marker) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([_Trap(marker)], dtype=object), allow_pickle=True)
    return buf.getvalue()


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    # the trap is live: unpickling it really would create a file
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Trap(live))).close()  # the result is the opened file
    assert live.exists()

    marker = tmp_path / "MARKER"
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.array([_Trap(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match="not a funcnn checkpoint"):
        ckpt.load(plain, {"a": jnp.ones(1)})

    # a genuine header whose leaf member was swapped for an object array
    path = ckpt.save(tmp_path / "s.npz", {"a": jnp.ones(1)})
    rewrite(path, {"['a'].npy": _object_npy(marker)})
    for call in (lambda: ckpt.load(path, {"a": jnp.ones(1)}), lambda: ckpt.read(path)):
        with pytest.raises(CheckpointError, match="pickle"):
            call()
    assert not marker.exists()


# ---------------------------------------------------------------- atomic writes


def _fail_write_array(monkeypatch):
    real, calls = np.lib.format.write_array, []

    def write_then_fail(fp, array, **kw):
        calls.append(1)
        if len(calls) == 2:
            fp.write(b"\x93NUMPY partial bytes")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fp, array, **kw)

    monkeypatch.setattr(np.lib.format, "write_array", write_then_fail)


def _fail_fsync(monkeypatch):
    def boom(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", boom)


def _fail_replace(monkeypatch):
    def boom(src, dst):
        raise OSError(errno.EXDEV, "cannot replace")

    monkeypatch.setattr(os, "replace", boom)


@pytest.mark.parametrize("sabotage", [_fail_write_array, _fail_fsync, _fail_replace])
def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, sabotage):
    old, target = make_state(0), tmp_path / "s.npz"
    ckpt.save(target, old, metadata={"v": "old"})
    before = target.read_bytes()
    sabotage(monkeypatch)
    with pytest.raises(OSError):
        ckpt.save(target, make_state(1), metadata={"v": "new"})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]
    assert target.read_bytes() == before
    assert_bitwise_equal(old, ckpt.load(target, old))
    # with no previous checkpoint, nothing at all is left behind
    sabotage(monkeypatch)
    with pytest.raises(OSError):
        ckpt.save(tmp_path / "fresh.npz", old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


def test_missing_or_unusable_folder_is_named(tmp_path, monkeypatch):
    missing = tmp_path / "no" / "such"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ckpt.save(missing / "s.npz", {})
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match=str(afile)):
        ckpt.save(afile / "s.npz", {})
    with pytest.raises(IsADirectoryError, match="is a folder"):
        ckpt.save(tmp_path, {})

    def denied(path, *args, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(PermissionError, match=f"checkpoint folder {tmp_path}"):
        ckpt.save(tmp_path / "s.npz", {})


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores folder permissions")
def test_read_only_folder_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=f"{locked} is not writable"):
            ckpt.save(locked / "s.npz", {})
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------- run directories


def test_latest_picks_highest_step_and_ignores_temp_files(tmp_path):
    assert ckpt.latest(tmp_path) is None
    assert ckpt.latest(tmp_path / "not-yet") is None
    for name in ["ckpt_00000002.npz", "ckpt_00000010.npz", "ckpt_9.npz", "ckpt_final.npz",
                 ".ckpt_00000099.npz.3fa2.tmp", "ckpt_00000500.npz.tmp", "other_00000700.npz"]:
        (tmp_path / name).write_bytes(b"")
    assert ckpt.latest(tmp_path) == tmp_path / "ckpt_00000010.npz"
    assert ckpt.latest(tmp_path, pattern="*ckpt*") == tmp_path / "ckpt_00000010.npz"
    assert ckpt.latest(tmp_path, pattern="other_*.npz") == tmp_path / "other_00000700.npz"


def test_save_step_rotates_only_after_new_file_is_complete(tmp_path, monkeypatch):
    (tmp_path / "ckpt_best.npz").write_bytes(b"user file")
    for step in range(1, 6):
        ckpt.save_step(tmp_path, step, {"s": jnp.array(step)}, metadata={"step": step})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt_00000003.npz", "ckpt_00000004.npz", "ckpt_00000005.npz", "ckpt_best.npz"]
    newest = ckpt.latest(tmp_path)
    assert newest.name == "ckpt_00000005.npz" and ckpt.load_metadata(newest) == {"step": 5}
    assert int(ckpt.load(newest, {"s": jnp.array(0)})["s"]) == 5

    _fail_write_array(monkeypatch)  # a failed save prunes nothing
    with pytest.raises(OSError):
        ckpt.save_step(tmp_path, 6, {"a": jnp.ones(2), "b": jnp.ones(2)}, keep=1)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == names

    ckpt.save_step(tmp_path, 2, {"s": jnp.array(2)})  # an older step is kept, with the 2 highest
    assert ckpt.latest(tmp_path).name == "ckpt_00000005.npz"
    assert sorted(p.name for p in tmp_path.glob("ckpt_0*")) == [
        "ckpt_00000002.npz", "ckpt_00000004.npz", "ckpt_00000005.npz"]
    ckpt.save_step(tmp_path, 7, {}, keep=None)
    assert len(list(tmp_path.glob("ckpt_0*"))) == 4


@pytest.mark.parametrize("step,keep,exc", [(-1, 3, ValueError), (1.5, 3, TypeError),
                                           (True, 3, TypeError), (1, 0, ValueError)])
def test_save_step_rejects_bad_arguments(tmp_path, step, keep, exc):
    with pytest.raises(exc):
        ckpt.save_step(tmp_path, step, {}, keep=keep)
    assert list(tmp_path.iterdir()) == []


def test_steps_lists_only_step_files_newest_first(tmp_path):
    assert ckpt.steps(tmp_path / "missing") == []
    for s in (3, 12, 7):
        ckpt.save_step(tmp_path, s, {"a": jnp.zeros(2)}, keep=None)
    (tmp_path / "ckpt_best.npz").write_bytes(b"user file")
    (tmp_path / ".ckpt_00000099.npz.abc.tmp").write_bytes(b"")
    assert [s for s, _ in ckpt.steps(tmp_path)] == [12, 7, 3]
    assert ckpt.steps(tmp_path)[0][1].name == "ckpt_00000012.npz"
