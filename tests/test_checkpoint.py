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
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import checkpoint as ckpt
from funcnn import data, experiment, losses, nn, optim, train
from funcnn.checkpoint import CheckpointError

REPO = Path(__file__).resolve().parents[1]


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
    params = (layer, {"mask": jnp.array([True, False, True]),
                      "idx": jnp.arange(5, dtype=jnp.int32)},
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


def rewrite(path: Path, replace: dict, seal: bool = True) -> None:
    """Rebuild the zip at `path` with some members' bytes replaced: valid zip CRCs and,
    with `seal`, a valid whole-file sha256 (what a buggy or forging writer would make),
    so that the checks behind the whole-file one are reached."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members.update(replace)
    with zipfile.ZipFile(path, "w") as zf:
        if seal:
            zf.comment = ckpt.fileformat.SEAL + b"0" * 64
        for name, data in members.items():
            zf.writestr(name, data)
    if seal:
        data = path.read_bytes()
        path.write_bytes(data[:-64] + ckpt.fileformat.file_sha256(data))


def edit_header(path: Path, change, fix_checksum: bool = True, seal: bool = True) -> None:
    with zipfile.ZipFile(path) as zf:
        header = json.loads(zf.read(ckpt.HEADER))
    change(header)
    if fix_checksum:
        header["checksum"] = ckpt.fileformat.header_checksum(header)
    rewrite(path, {ckpt.HEADER: json.dumps(header).encode()}, seal=seal)


def make_version_1(path: Path) -> Path:
    """Rewrite a checkpoint as funcnn wrote version 1: leaves, then the header, sizes
    patched into the local headers, no whole-file sha256."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    header = json.loads(members.pop(ckpt.HEADER))
    header["version"] = 1
    header["checksum"] = ckpt.fileformat.header_checksum(header)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, ckpt.fileformat.ZIP_TIME)
            with zf.open(info, "w", force_zip64=True) as m:
                m.write(data)
        zf.writestr(zipfile.ZipInfo(ckpt.HEADER, ckpt.fileformat.ZIP_TIME),
                    json.dumps(header, indent=1, sort_keys=True))
    return path


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
    assert np.array_equal(jax.random.uniform(back.key[2], (3,)),
                          jax.random.uniform(state.key[2], (3,)))


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
    meta = {"lr": 0.05, "layers": [2, 64, 3], "name": "spiral",
            "nested": {"ok": True, "none": None}}
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
    tree = {"w": jnp.ones((3, 4), jnp.float32), "n": jnp.array(1, jnp.int32),
            "k": jax.random.key(0)}
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


@pytest.mark.parametrize("version", [1, 2])
def test_changed_array_with_valid_zip_crc_fails_sha256(tmp_path, version):
    path = ckpt.save(tmp_path / "s.npz", {"a": jnp.ones(4)})
    if version == 1:
        make_version_1(path)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.full(4, 2.0))
    # version 2 is sealed anew: only the leaf's sha256 can see the change
    rewrite(path, {"['a'].npy": buf.getvalue()}, seal=version == 2)
    with pytest.raises(CheckpointError, match=r"\['a'\]: checksum mismatch"):
        ckpt.load(path, {"a": jnp.ones(4)})


def test_edited_header_fails_checksum_and_bad_version_is_named(tmp_path):
    path = ckpt.save(tmp_path / "s.npz", {"a": jnp.ones(4)}, metadata={"lr": 0.1})
    edit_header(path, lambda h: h["metadata"].update(lr=0.2), fix_checksum=False)
    with pytest.raises(CheckpointError, match="header checksum mismatch"):
        ckpt.load_metadata(path)
    edit_header(path, lambda h: h.update(version=99))
    with pytest.raises(ckpt.CheckpointVersionError, match="unsupported format version 99"):
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


def small_tree() -> dict:
    """A few leaves of each kind: the file is under 2 KB, so every byte can be flipped."""
    return {"w": jnp.arange(3, dtype=jnp.float32), "n": jnp.array(2**40, jnp.int64),
            "k": jax.random.key(0)}


def flip_each_byte(path: Path, check) -> None:
    """Flip each byte of the file in turn (xor 0xFF), call ``check(offset)``, restore it."""
    orig = path.read_bytes()
    with open(path, "r+b", buffering=0) as f:
        for i, byte in enumerate(orig):
            f.seek(i)
            f.write(bytes([byte ^ 0xFF]))
            check(i)
            f.seek(i)
            f.write(bytes([byte]))
    assert path.read_bytes() == orig


def refusal(path: Path, call, i: int) -> str:
    """The CheckpointError message of ``call()``; any other outcome fails the test."""
    try:
        call()
    except CheckpointError as e:
        assert str(path) in str(e), (i, str(e))
        return str(e)
    except Exception as e:
        pytest.fail(f"byte {i} flipped: {type(e).__name__} escaped: {e}")
    pytest.fail(f"byte {i} flipped: loaded without an error")


def test_every_single_byte_flip_is_refused_as_damaged(tmp_path):
    tree = small_tree()
    path = ckpt.save(tmp_path / "s.npz", tree, metadata={"epoch": 1})
    size = path.stat().st_size
    assert size < 2048

    def check(i):
        for call in (lambda: ckpt.load(path, tree), lambda: ckpt.load_metadata(path)):
            msg = refusal(path, call, i)
            assert "damaged funcnn checkpoint" in msg, (i, msg)

    flip_each_byte(path, check)
    assert_bitwise_equal(tree, ckpt.load(path, tree))


def test_version_1_files_load_and_byte_flips_are_refused_or_harmless(tmp_path):
    """Files written before the whole-file sha256 are still read, with every parse step
    guarded: a flip is refused, or it hit zip bookkeeping that is never used (a local
    header's copy of the sizes, a timestamp) and the data comes back bitwise equal."""
    tree = small_tree()
    path = make_version_1(ckpt.save(tmp_path / "s.npz", tree, metadata={"epoch": 1}))
    assert_bitwise_equal(tree, ckpt.load(path, tree))
    assert ckpt.load_metadata(path) == {"epoch": 1}
    blob, stored = path.read_bytes(), []  # where each member's stored bytes are
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            at = info.header_offset
            name_len, extra_len = int.from_bytes(blob[at + 26:at + 28], "little"), \
                int.from_bytes(blob[at + 28:at + 30], "little")
            start = at + 30 + name_len + extra_len
            stored.append(range(start, start + info.compress_size))
    harmless = []

    def check(i):
        try:
            back = ckpt.load(path, tree)
        except CheckpointError as e:
            assert str(path) in str(e) and "damaged funcnn checkpoint" in str(e), (i, str(e))
        except Exception as e:
            pytest.fail(f"byte {i} flipped: {type(e).__name__} escaped: {e}")
        else:
            assert_bitwise_equal(tree, back)
            harmless.append(i)

    flip_each_byte(path, check)
    assert not [i for i in harmless if any(i in r for r in stored)]  # never a member's bytes


def test_file_is_a_plain_zip_and_npz(tmp_path):
    tree = {"w": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "k": jax.random.key(2)}
    path = ckpt.save(tmp_path / "s.npz", tree)
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        assert zf.namelist()[0] == ckpt.HEADER  # says what it is in its first bytes
        assert re.fullmatch(rb"funcnn-sha256:[0-9a-f]{64}", zf.comment)
    with np.load(path, allow_pickle=False) as npz:
        assert np.array_equal(npz["['w']"], tree["w"])
    assert_bitwise_equal(tree, ckpt.load(path, tree))
    assert ckpt.read(path)["['w']"].flags.writeable


def test_damaged_zip_directory_that_zipfile_trips_on_is_a_checkpoint_error(tmp_path):
    """The zip fields that made zipfile raise NotImplementedError or RuntimeError ("zip
    file version", "encrypted", "compression method") give CheckpointError, sealed or not."""
    for version in (1, 2):
        tree = small_tree()
        path = ckpt.save(tmp_path / f"v{version}.npz", tree)
        if version == 1:
            make_version_1(path)
        orig = path.read_bytes()
        central = orig.index(b"PK\x01\x02")  # the first central directory record
        for field, value in [(6, 0xFF), (8, 0x01), (10, 0x08)]:  # version needed, flags, method
            blob = bytearray(orig)
            blob[central + field] = value
            path.write_bytes(bytes(blob))
            msg = refusal(path, lambda p=path, t=tree: ckpt.load(p, t), central + field)
            assert "damaged funcnn checkpoint" in msg


def test_huge_npy_shape_is_refused_without_allocating(tmp_path):
    """A .npy header claiming 8 TiB, behind a matching header record, valid CRCs and a
    valid seal, is refused from the bytes actually there: nothing is allocated."""
    path = ckpt.save(tmp_path / "s.npz", {"a": jnp.ones(4)})
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                               "shape": (2**40,)})
    edit_header(path, lambda h: h["leaves"][0].update(shape=[2**40]))
    rewrite(path, {"['a'].npy": buf.getvalue() + np.ones(4).tobytes()})
    with pytest.raises(CheckpointError,
                       match=r"holds 32 bytes of data, its shape needs 8796093022208"):
        ckpt.read(path)


NARROWING = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from funcnn import checkpoint as ckpt, nn, optim, train

    assert not jax.config.jax_enable_x64
    path = sys.argv[1]
    tree = {"big": np.array(2**40, np.int64), "x": np.float64(0.1), "w": jnp.arange(3.0)}
    ckpt.save(path, tree)
    try:
        ckpt.load(path, tree)
    except ckpt.NarrowingError as e:
        print("REFUSED", e)
    assert int(ckpt.read(path)["['big']"]) == 2**40  # read keeps the stored width

    model = nn.serial(nn.dense(4), nn.relu(), nn.dense(2))  # a 32-bit state round-trips
    state = train.init_state(model, optim.adam(0.1), jax.random.key(0), (3,))
    back = ckpt.load(ckpt.save(path + ".state.npz", state), state)
    def data(x):
        return (jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                else x)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
        assert a.dtype == b.dtype and np.array_equal(data(a), data(b))
    print("STATE OK")
""")


def test_load_refuses_to_narrow_with_x64_off(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", NARROWING, str(tmp_path / "n.npz")], env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert "REFUSED" in out.stdout and "STATE OK" in out.stdout
    assert "['big']: int64 -> int32" in out.stdout and "['x']: float64 -> float32" in out.stdout
    assert "['w']:" not in out.stdout  # float32 leaves are fine
    assert 'jax.config.update("jax_enable_x64", True)' in out.stdout
    assert "checkpoint.read" in out.stdout and str(tmp_path / "n.npz") in out.stdout


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


def test_save_removes_its_own_stale_temporaries_and_nothing_else(tmp_path, monkeypatch):
    # learn the temporary name a save really uses (a killed save leaves exactly that)
    used, real_replace = [], os.replace

    def spy(src, dst):
        used.append(Path(src).name)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    ckpt.save(tmp_path / "s.npz", {"a": jnp.ones(2)})
    monkeypatch.undo()
    assert len(used) == 1 and re.fullmatch(r"\.s\.npz\.[0-9a-f]{12}\.tmp", used[0])

    stale = [used[0], ".s.npz.0123456789ab.tmp"]
    others = [".s.npz.tmp", ".s.npz.0123456789AB.tmp", ".s.npz.0123456789abc.tmp",
              ".s.npz.0123456789ab.tmp.bak", "s.npz.0123456789ab.tmp", ".t.npz.0123456789ab.tmp",
              ".xs.npz.0123456789ab.tmp", ".s.npy.0123456789ab.tmp", "notes.txt"]
    for name in stale + others:
        (tmp_path / name).write_bytes(b"x" * 1000)
    (tmp_path / ".s.npz.aaaaaaaaaaaa.tmp").mkdir()  # a folder of that name is not ours
    (tmp_path / ".s.npz.aaaaaaaaaaaa.tmp" / "inside").write_text("keep")
    (tmp_path / "outside").write_text("keep")
    (tmp_path / ".s.npz.bbbbbbbbbbbb.tmp").symlink_to(tmp_path / "outside")  # nor is a link
    ckpt.save(tmp_path / "s.npz", {"a": jnp.zeros(2)})
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"s.npz", "outside", ".s.npz.aaaaaaaaaaaa.tmp", ".s.npz.bbbbbbbbbbbb.tmp",
                    *others}
    assert (tmp_path / "outside").read_text() == "keep"
    assert int(ckpt.load(tmp_path / "s.npz", {"a": jnp.ones(2)})["a"][0]) == 0

    # save_step saves through save: the next save of a step cleans that step's leftovers
    (tmp_path / ".ckpt_00000005.npz.0123456789ab.tmp").write_bytes(b"x")
    (tmp_path / ".ckpt_00000006.npz.0123456789ab.tmp").write_bytes(b"x")
    ckpt.save_step(tmp_path, 5, {"a": jnp.ones(2)})
    assert not (tmp_path / ".ckpt_00000005.npz.0123456789ab.tmp").exists()
    assert (tmp_path / ".ckpt_00000006.npz.0123456789ab.tmp").exists()


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


# ---------------------------------------------------------------- resuming a run


@dataclasses.dataclass(frozen=True)
class SpiralConfig:
    epochs: int = 5


# Built once: layers and optimizers hash by identity, so the test's runs share fit's
# compiled program (one call per epoch, each the same program) instead of compiling it
# for each run.
SPIRAL_MODEL = nn.serial(nn.dense(8), nn.relu(), nn.dense(3))
SPIRAL_OPT = optim.adam(0.02)


def spiral_run(r: experiment.Run):
    x, y = data.spiral_data(20, 3)
    model, opt = SPIRAL_MODEL, SPIRAL_OPT
    state = train.init_state(model, opt, r.key, (2,))
    state, _ = r.fit(model, losses.softmax_cross_entropy, opt, state, x, y,
                     epochs=r.config.epochs, batch_size=20)
    return state


def test_resume_falls_back_past_every_damaged_checkpoint(tmp_path, capsys):
    argv = ["--runs-dir", str(tmp_path), "--no-plots"]
    reference = experiment.main("spiral", SpiralConfig, spiral_run, argv)
    (folder,) = (tmp_path / "spiral").iterdir()
    ckdir = folder / "checkpoints"
    names = [f"ckpt_{e:08d}.npz" for e in (3, 4, 5)]
    assert sorted(p.name for p in ckdir.iterdir()) == names
    capsys.readouterr()

    def damage(name, how):
        blob = bytearray((ckdir / name).read_bytes())
        if how == "zip version":  # zipfile used to raise NotImplementedError on this one
            blob[blob.index(b"PK\x01\x02") + 6] = 0xFF
        else:
            blob = blob[:len(blob) // 2]
        (ckdir / name).write_bytes(bytes(blob))

    damage(names[2], "zip version")
    damage(names[1], "truncated")
    resumed = experiment.main("spiral", SpiralConfig, spiral_run, argv)
    err = capsys.readouterr().err
    for name in names[1:]:
        assert f"skipping the damaged checkpoint {name}" in err and f"{name}.damaged" in err
        assert (ckdir / f"{name}.damaged").is_file()
    assert "damaged funcnn checkpoint" in err
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["resumed_from_epoch"] == 3 and manifest["status"] == "completed"
    assert_bitwise_equal(reference, resumed)
    rows = experiment.read_metrics(folder / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]

    # with every checkpoint damaged, the run starts again from scratch and says so
    for name in names:
        damage(name, "zip version")
    again = experiment.main("spiral", SpiralConfig, spiral_run, argv)
    err = capsys.readouterr().err
    assert all(f"skipping the damaged checkpoint {name}" in err for name in names)
    assert "none of the 3 checkpoints" in err and "from scratch" in err
    assert json.loads((folder / "manifest.json").read_text())["resumed_from_epoch"] is None
    assert_bitwise_equal(reference, again)

    # an intact checkpoint from a newer funcnn is not damage: stop, and leave it be
    newest = ckdir / names[2]
    edit_header(newest, lambda h: h.update(version=ckpt.VERSION + 1))
    with pytest.raises(experiment.ExperimentError, match="unsupported format version"):
        experiment.main("spiral", SpiralConfig, spiral_run, argv)
    assert newest.is_file() and ckpt.steps(ckdir)[0][1] == newest
