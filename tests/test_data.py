"""Tests for funcnn.data: generated sets, batching, IDX, verified MNIST-style loading."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import gzip  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from funcnn import data  # noqa: E402
from funcnn.data import mnist as mnist_module  # noqa: E402
from funcnn.data import (ChecksumError, DatasetSpec, IdxFile, batches,  # noqa: E402
                         check_dataset, load_idx_dataset, read_idx)


# --------------------------------------------------------------------------------------
# Generated sets: equal to nnfs after nnfs.init(), bit for bit
# --------------------------------------------------------------------------------------

def nnfs_reference(tmp_path: Path, body: str) -> dict:
    """Run ``body`` after ``nnfs.init()`` in a fresh Python and return what it saved.

    nnfs.init() monkeypatches numpy for the rest of its process, so it must never
    run inside the pytest process. ``body`` fills a dict ``out`` of arrays.
    """
    target = tmp_path / "nnfs_ref.npz"
    script = "import numpy as np, nnfs\nnnfs.init()\nout = {}\n" + textwrap.dedent(body) \
        + f"\nnp.savez({str(target)!r}, **out)\n"
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=60)
    with np.load(target) as f:
        return dict(f)


needs_nnfs = pytest.mark.skipif(importlib.util.find_spec("nnfs") is None,
                                reason="nnfs (test extra) not installed")


def assert_identical(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@needs_nnfs
def test_generated_sets_equal_nnfs_bit_for_bit(tmp_path):
    ref = nnfs_reference(tmp_path, """
        from nnfs.datasets import spiral_data, vertical_data, sine_data
        out["X"], out["y"] = spiral_data(samples=100, classes=3)
        out["w1"] = 0.01 * np.random.randn(2, 3)       # the book's chapter-5 weights
        out["w2"] = 0.01 * np.random.randn(3, 3)
        np.random.seed(7)
        out["vX"], out["vy"] = vertical_data(50, 4)
        out["sX"], out["sy"] = sine_data()
        out["sX37"], out["sy37"] = sine_data(37)
    """)
    rng = np.random.RandomState(0)
    X, y = data.spiral_data(100, 3, rng=rng)
    assert_identical(X, ref["X"])
    assert_identical(y, ref["y"])
    assert X.dtype == np.float32 and y.dtype == np.uint8
    # Continuing the stream gives the book's weights, rounded to float32 as nnfs does.
    assert_identical(0.01 * rng.randn(2, 3).astype(np.float32), ref["w1"])
    assert_identical(0.01 * rng.randn(3, 3).astype(np.float32), ref["w2"])
    assert_identical(data.spiral_data(100, 3)[0], ref["X"])  # default seed is nnfs's 0
    vX, vy = data.vertical_data(50, 4, seed=7)
    assert_identical(vX, ref["vX"])
    assert_identical(vy, ref["vy"])
    for (sX, sy), n in ((data.sine_data(), ""), (data.sine_data(37), "37")):
        assert_identical(sX, ref["sX" + n])
        assert_identical(sy, ref["sy" + n])


def test_generated_sets_shapes_seeds_and_labels():
    X, y = data.spiral_data(20, 4, seed=1)
    assert X.shape == (80, 2) and y.shape == (80,)
    assert np.array_equal(np.bincount(y), [20] * 4)
    assert np.array_equal(X, data.spiral_data(20, 4, seed=1)[0])
    assert not np.array_equal(X, data.spiral_data(20, 4, seed=2)[0])
    vX, vy = data.vertical_data(200, 3, seed=0)
    centres = [vX[vy == c].mean(axis=0) for c in range(3)]
    np.testing.assert_allclose(centres, [[0, 0.5], [1 / 3, 0.5], [2 / 3, 0.5]], atol=0.03)


@pytest.mark.parametrize("call, error, match", [
    (lambda: data.spiral_data(0, 3), ValueError, "samples must be a positive int"),
    (lambda: data.spiral_data(10, 2.5), ValueError, "classes must be a positive int"),
    (lambda: data.vertical_data(10, 300), ValueError, "at most 256"),
    (lambda: data.sine_data(-1), ValueError, "samples"),
    (lambda: data.spiral_data(10, 3, seed=1, rng=np.random.RandomState(0)), ValueError,
     "either seed= or rng="),
    (lambda: data.spiral_data(10, 3, rng=np.random.default_rng(0)), TypeError, "RandomState"),
])
def test_generated_sets_reject_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------------------
# check_dataset and batches
# --------------------------------------------------------------------------------------

def test_batches_in_order_with_and_without_remainder():
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10)
    got = list(batches(x, y, 4))
    assert [len(b[1]) for b in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), y)
    assert [len(b[1]) for b in batches(x, y, 4, drop_remainder=True)] == [4, 4]
    assert [len(b[1]) for b in batches(x, y, 10)] == [10]


@pytest.mark.parametrize("shuffle", [{"seed": 3}, {"key": jax.random.key(3)}])
def test_batches_shuffle_is_a_deterministic_permutation(shuffle):
    x, y = np.arange(40).reshape(20, 2), np.arange(20)
    got = list(batches(x, y, 6, **shuffle))
    ys = np.concatenate([b[1] for b in got])
    assert sorted(ys.tolist()) == list(range(20))          # every example exactly once
    assert not np.array_equal(ys, y)                         # and not in the original order
    for xb, yb in got:                                       # rows stay paired with labels
        np.testing.assert_array_equal(xb, x[yb])
    again = np.concatenate([b[1] for b in batches(x, y, 6, **shuffle)])
    np.testing.assert_array_equal(ys, again)
    kept = np.concatenate([b[1] for b in batches(x, y, 6, drop_remainder=True, **shuffle)])
    np.testing.assert_array_equal(kept, ys[:18])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"batch_size": 0}, ValueError, r"batch_size must be an int in \[1, 5\]"),
    ({"batch_size": 6}, ValueError, "no larger than the data set"),
    ({"batch_size": True}, ValueError, "batch_size"),
    ({"batch_size": 2, "seed": 0, "key": jax.random.key(0)}, ValueError, "not both"),
    ({"batch_size": 2, "key": 0}, TypeError, "jax.random.key"),
])
def test_batches_rejects_bad_arguments_at_call_time(kwargs, error, match):
    x, y = np.zeros((5, 2)), np.zeros(5, dtype=int)
    with pytest.raises(error, match=match):
        batches(x, y, **kwargs)  # no iteration needed: checks run eagerly


def test_batches_checks_the_data():
    with pytest.raises(ValueError, match="same number of examples"):
        batches(np.zeros((5, 2)), np.zeros(4), 2)
    x = np.zeros((5, 2))
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"1 non-finite value.*index \(3, 1\)"):
        batches(x, np.zeros(5), 2)


@pytest.mark.parametrize("x, y, num_classes, match", [
    (np.zeros((3, 2)), np.zeros(2), None, r"len\(x\)=3.*len\(y\)=2"),
    (np.zeros((0, 2)), np.zeros(0), None, "empty"),
    (np.float64(1.0), np.zeros(1), None, "scalar"),
    (np.zeros((2, 2)), np.array([0.0, np.inf]), None, r"y holds 1 non-finite"),
    (np.zeros((3, 2)), np.array([0, 3, 1]), 3, r"\[0, 3\).*y\[1\]=3"),
    (np.zeros((3, 2)), np.array([0, -1, 1]), 3, r"y\[1\]=-1"),
    (np.zeros((3, 2)), np.array([0.0, 1.0, 2.0]), 3, "must be integers"),
    (np.zeros((3, 2)), np.zeros((3, 4)), 3, r"\(N, 3\)"),
    (np.zeros((3, 2)), np.zeros((3, 1, 1), dtype=int), 3, r"shape \(N,\)"),
    (np.zeros((3, 2)), np.zeros(3, dtype=int), 0, "num_classes must be a positive int"),
])
def test_check_dataset_names_the_problem(x, y, num_classes, match):
    with pytest.raises(ValueError, match=match):
        check_dataset(x, y, num_classes=num_classes)


def test_check_dataset_accepts_good_data():
    x = np.ones((4, 3), dtype=np.float32)
    assert check_dataset(x, np.array([0, 1, 2, 1], dtype=np.uint8), num_classes=3) is None
    assert check_dataset(x, np.eye(3)[[0, 1, 2, 1]], num_classes=3) is None
    assert check_dataset(x, np.linspace(0, 1, 4)) is None  # regression targets


# --------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------

def idx_by_hand(arr: np.ndarray, code: int, big_endian: str) -> bytes:
    """IDX bytes built from the spec, independent of funcnn's own writer."""
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">i", d) for d in arr.shape)
    return header + arr.astype(big_endian).tobytes()


IDX_CASES = [(0x08, ">u1", np.uint8), (0x09, ">i1", np.int8), (0x0B, ">i2", np.int16),
             (0x0C, ">i4", np.int32), (0x0D, ">f4", np.float32), (0x0E, ">f8", np.float64)]


@pytest.mark.parametrize("code, big, native", IDX_CASES)
def test_read_idx_every_dtype_from_bytes_file_and_gzip(tmp_path, code, big, native):
    arr = (np.arange(2 * 3 * 5).reshape(2, 3, 5) * 7 - 50).astype(native)
    if native in (np.float32, np.float64):
        arr = arr / np.asarray(3, dtype=native)
    blob = idx_by_hand(arr, code, big)
    (tmp_path / "a").write_bytes(blob)
    (tmp_path / "a.gz").write_bytes(gzip.compress(blob))
    for source in (blob, gzip.compress(blob), tmp_path / "a", str(tmp_path / "a.gz")):
        got = read_idx(source)
        assert got.dtype == np.dtype(native) and got.dtype.isnative and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
        got[0, 0, 0] = 1  # an ordinary writable array
    assert data.encode_idx(arr) == blob


def test_write_idx_roundtrip_and_gzip(tmp_path):
    arr = np.arange(12, dtype=np.int32).reshape(3, 4)
    for name in ("x.idx", "x.idx.gz"):
        data.write_idx(tmp_path / name, arr)
        np.testing.assert_array_equal(read_idx(tmp_path / name), arr)
    assert (tmp_path / "x.idx.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.idx", "x.idx.gz"]
    with pytest.raises(ValueError, match="IDX stores"):
        data.encode_idx(np.zeros(2, dtype=np.complex64))


GOOD = idx_by_hand(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), 0x08, ">u1")


@pytest.mark.parametrize("blob, match", [
    (b"\x00\x00", "too short"),
    (b"\x1f\x00" + GOOD[2:], "bad magic"),
    (b"<htm" + GOOD[4:], "bad magic"),
    (GOOD[:2] + b"\x0a" + GOOD[3:], "unknown dtype code 0x0A"),
    (GOOD[:10], "header ends early"),
    (GOOD[:-5], "truncated.*24 bytes of data, but only 19"),
    (GOOD + b"\x00", "extra bytes"),
    (gzip.compress(GOOD, mtime=0)[:-12], "broken gzip|truncated"),
])
def test_read_idx_rejects_corrupt_files_naming_them(tmp_path, blob, match):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value) and "download it again" in str(info.value)


# --------------------------------------------------------------------------------------
# MNIST-style loading: data_dir, cache, download, verification, atomicity
# --------------------------------------------------------------------------------------

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def fake_arrays(seed: int = 0) -> list[np.ndarray]:
    """Tiny stand-ins for the four MNIST arrays: 6 train and 4 test images of 4x4."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
            np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8),
            rng.integers(0, 256, (4, 4, 4), dtype=np.uint8),
            np.array([2, 1, 0, 0], dtype=np.uint8)]


def gz(arr: np.ndarray) -> bytes:
    return gzip.compress(data.encode_idx(arr), compresslevel=9, mtime=0)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def fake_spec(mirrors: list[Path], *, raw_checksums: bool = True) -> DatasetSpec:
    """A DatasetSpec for the fake arrays, with checksums computed here (injected)."""
    files = []
    for name, arr in zip(FILES, fake_arrays()):
        blob = gz(arr)
        extra = {"raw_sha256": sha(data.encode_idx(arr))} if raw_checksums else {}
        files.append(IdxFile(name, arr.shape, gz_sha256=sha(blob), gz_size=len(blob), **extra))
    return DatasetSpec("fake", tuple(m.as_uri() + "/" for m in mirrors), *files)


def write_files(folder: Path, arrays, *, compress=gz) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(FILES, arrays):
        if compress is None:
            (folder / name).write_bytes(data.encode_idx(arr))
        else:
            (folder / (name + ".gz")).write_bytes(compress(arr))
    return folder


def assert_loaded(result) -> None:
    (x_train, y_train), (x_test, y_test) = result
    for got, want in zip((x_train, y_train, x_test, y_test), fake_arrays()):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)


def test_load_from_data_dir_gz_plain_or_recompressed(tmp_path):
    spec = fake_spec([tmp_path / "unused"])
    assert_loaded(load_idx_dataset(spec, write_files(tmp_path / "a", fake_arrays())))
    assert_loaded(load_idx_dataset(spec, write_files(tmp_path / "b", fake_arrays(),
                                                     compress=None)))
    # Recompressed: the .gz checksum differs, the decompressed one still matches.
    def regz(arr):
        return gzip.compress(data.encode_idx(arr), compresslevel=1, mtime=12345)
    folder = write_files(tmp_path / "c", fake_arrays(), compress=regz)
    assert sha((folder / (FILES[0] + ".gz")).read_bytes()) != spec.train_images.gz_sha256
    assert_loaded(load_idx_dataset(spec, folder))


def test_checksum_mismatch_names_file_hashes_and_fix(tmp_path):
    spec = fake_spec([tmp_path / "unused"])
    arrays = fake_arrays()
    arrays[2] = arrays[2].copy()
    arrays[2][0, 0, 0] ^= 1  # one flipped bit in the test images
    folder = write_files(tmp_path / "d", arrays)
    with pytest.raises(ChecksumError) as info:
        load_idx_dataset(spec, folder)
    msg = str(info.value)
    bad = folder / (FILES[2] + ".gz")
    assert str(bad) in msg and "delete" in msg
    assert spec.test_images.raw_sha256 in msg and spec.test_images.gz_sha256 in msg
    assert sha(data.encode_idx(arrays[2])) in msg  # what it got
    # The wrong shape (e.g. another data set's file) is named too.
    arrays = fake_arrays()
    arrays[1] = np.zeros(7, dtype=np.uint8)
    with pytest.raises(ChecksumError, match=r"shape \(6,\), got uint8 of shape \(7,\)"):
        load_idx_dataset(spec, write_files(tmp_path / "e", arrays))


def test_another_known_data_sets_file_is_named_not_called_damaged(tmp_path, monkeypatch):
    """Fashion-MNIST's folder given to load_mnist: the files are fine, so the error
    names the data set they belong to and its loader, and does not say to delete them
    (which the checksum advice would)."""
    ours = fake_spec([tmp_path / "unused"])
    other_arrays = fake_arrays(seed=1)
    files = []
    for name, arr in zip(FILES, other_arrays):   # another data set's files
        blob = gz(arr)
        files.append(IdxFile(name, arr.shape, gz_sha256=sha(blob), gz_size=len(blob),
                             raw_sha256=sha(data.encode_idx(arr))))
    theirs = DatasetSpec("other-set", (), *files)
    monkeypatch.setattr(data.mnist, "_KNOWN", ((ours, "data.load_ours"),
                                               (theirs, "data.load_other")))
    folder = write_files(tmp_path / "other", [other_arrays[0], *fake_arrays()[1:]])
    with pytest.raises(ChecksumError) as info:
        load_idx_dataset(ours, folder)
    msg = str(info.value)
    assert "this is other-set's train-images-idx3-ubyte" in msg and "data.load_other" in msg
    assert "keep it" in msg and "delete" not in msg
    # the same file recompressed (only its decompressed checksum matches): recognised too
    folder = write_files(tmp_path / "other2", [other_arrays[0], *fake_arrays()[1:]],
                         compress=lambda a: gzip.compress(data.encode_idx(a), mtime=7))
    with pytest.raises(ChecksumError, match="this is other-set's train-images"):
        load_idx_dataset(ours, folder)
    # a file of the data set being loaded, under another file's name: not "another
    # data set's, keep it", but the usual wrong-file error
    mixed = fake_arrays()
    folder = write_files(tmp_path / "mixed", [mixed[0], mixed[1], mixed[0], mixed[3]])
    with pytest.raises(ChecksumError) as info:
        load_idx_dataset(ours, folder)
    assert "keep it" not in str(info.value)


def test_download_into_cache_then_load_offline(tmp_path):
    mirror = write_files(tmp_path / "mirror", fake_arrays())
    spec = fake_spec([mirror])
    cache = tmp_path / "cache"
    assert_loaded(load_idx_dataset(spec, cache_dir=cache, verbose=False))
    assert sorted(p.name for p in (cache / "fake").iterdir()) == sorted(f + ".gz" for f in FILES)
    for f in mirror.iterdir():
        f.unlink()
    assert_loaded(load_idx_dataset(spec, cache_dir=cache, download=False))


def test_download_falls_back_to_next_mirror_and_never_keeps_bad_files(tmp_path):
    bad_arrays = fake_arrays(seed=1)  # other images (same labels): fail the checksum
    bad = write_files(tmp_path / "bad", bad_arrays)
    good = write_files(tmp_path / "good", fake_arrays())
    cache = tmp_path / "cache"
    assert_loaded(load_idx_dataset(fake_spec([bad, good]), cache_dir=cache, verbose=False))
    with pytest.raises(FileNotFoundError) as info:
        load_idx_dataset(fake_spec([bad]), cache_dir=tmp_path / "cache2", verbose=False)
    msg = str(info.value)
    assert "2 file(s) missing" in msg and "serves a different file" in msg
    assert sorted(p.name for p in (tmp_path / "cache2" / "fake").iterdir()) == \
        ["t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"]  # only verified files


def test_offline_error_lists_files_folder_and_urls(tmp_path):
    spec = fake_spec([tmp_path / "nowhere"])
    with pytest.raises(FileNotFoundError) as info:
        load_idx_dataset(spec, cache_dir=tmp_path / "c", download=False)
    msg = str(info.value)
    assert "4 file(s) missing" in msg and str(tmp_path / "c" / "fake") in msg
    assert "download=False" in msg
    for f in FILES:
        assert f"{f}.gz   from {spec.mirrors[0]}{f}.gz" in msg
    assert not (tmp_path / "c").exists()  # download=False creates nothing
    with pytest.raises(FileNotFoundError, match="Download errors"):  # mirror unreachable
        load_idx_dataset(spec, cache_dir=tmp_path / "c", verbose=False)
    with pytest.raises(FileNotFoundError, match="never downloads into it"):
        load_idx_dataset(spec, tmp_path / "c")
    # The real data sets say where their files come from.
    with pytest.raises(FileNotFoundError) as info:
        data.load_mnist(cache_dir=tmp_path / "m", download=False)
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz" \
        in str(info.value)
    assert str(tmp_path / "m" / "mnist") in str(info.value)
    with pytest.raises(FileNotFoundError, match="fashion-mnist.s3-website"):
        data.load_fashion_mnist(cache_dir=tmp_path / "m", download=False)


def test_cache_location_from_argument_env_var_and_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("FUNCNN_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "env"
    write_files(tmp_path / "env" / "fake", fake_arrays())
    spec = fake_spec([tmp_path / "nowhere"])
    assert_loaded(load_idx_dataset(spec, download=False))          # found through the env var
    with pytest.raises(FileNotFoundError):                          # cache_dir= wins over it
        load_idx_dataset(spec, cache_dir=tmp_path / "arg", download=False)
    monkeypatch.delenv("FUNCNN_DATA_DIR")
    assert data.default_cache_dir() == tmp_path / "xdg" / "funcnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.default_cache_dir() == Path.home() / ".cache" / "funcnn"


class _DiesHalfway(io.RawIOBase):
    """A fake HTTP response that sends some bytes, then fails (or is interrupted)."""

    def __init__(self, exc: BaseException):
        self.sent, self.exc = False, exc

    def readinto(self, buf):
        if self.sent:
            raise self.exc
        self.sent = True
        buf[:100] = b"\x1f\x8b" + b"x" * 98
        return 100

    def readable(self):
        return True


@pytest.mark.parametrize("exc", [ConnectionResetError("peer reset"), KeyboardInterrupt()])
def test_failed_download_leaves_no_file(tmp_path, monkeypatch, exc):
    monkeypatch.setattr(mnist_module, "urlopen", lambda url, timeout: _DiesHalfway(exc))
    spec = fake_spec([tmp_path / "mirror"])
    cache = tmp_path / "cache"
    if isinstance(exc, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            load_idx_dataset(spec, cache_dir=cache, verbose=False)
    else:
        with pytest.raises(FileNotFoundError, match="peer reset"):
            load_idx_dataset(spec, cache_dir=cache, verbose=False)
    assert list((cache / "fake").iterdir()) == []  # no partial file, no temporary file


def test_weaker_checks_without_decompressed_checksum(tmp_path):
    """MNIST has no published decompressed checksums: label counts and mean pixel stand in."""
    images, labels = fake_arrays()[:2]
    regz = gzip.compress(data.encode_idx(labels), compresslevel=1)
    blob = gz(labels)
    spec = IdxFile("labels", (6,), gz_sha256=sha(blob), gz_size=len(blob),
                   class_counts=(2, 2, 2))
    np.testing.assert_array_equal(mnist_module.verified_array(regz, spec, "x"), labels)
    other = gzip.compress(data.encode_idx(np.array([0, 0, 0, 1, 1, 2], np.uint8)))
    with pytest.raises(ChecksumError, match=r"labels per class are \[3, 2, 1\]"):
        mnist_module.verified_array(other, spec, "x")
    mean = images.mean() / 255
    ok = IdxFile("images", images.shape, gz_sha256="0" * 64, pixel_mean=round(mean, 3))
    np.testing.assert_array_equal(mnist_module.verified_array(gz(images), ok, "x"), images)
    far = IdxFile("images", images.shape, gz_sha256="0" * 64, pixel_mean=mean + 0.1)
    with pytest.raises(ChecksumError, match="mean pixel value"):
        mnist_module.verified_array(gz(images), far, "x")
    # With only a .gz checksum, nothing else can vouch for a file that does not match it.
    only_gz = IdxFile("labels", (6,), gz_sha256=sha(blob), gz_size=len(blob))
    np.testing.assert_array_equal(mnist_module.verified_array(blob, only_gz, "x"), labels)
    with pytest.raises(ChecksumError, match="no other checksum"):
        mnist_module.verified_array(regz, only_gz, "x")


def test_published_tables_are_complete():
    for spec in (data.MNIST, data.FASHION_MNIST):
        assert [f.name for f in spec.files] == list(FILES)
        assert [f.shape for f in spec.files] == [(60000, 28, 28), (60000,), (10000, 28, 28),
                                                 (10000,)]
        for f in spec.files:
            assert len(f.gz_sha256) == 64 and f.gz_size > 0
            # every file can be verified beyond its .gz checksum
            assert f.raw_sha256 or f.class_counts or f.pixel_mean
        assert all(m.endswith("/") for m in spec.mirrors)
    assert sum(data.MNIST.train_labels.class_counts) == 60000
    assert sum(data.MNIST.test_labels.class_counts) == 10000


# --------------------------------------------------------------------------------------
# scikit-learn digits (optional extra)
# --------------------------------------------------------------------------------------

def test_load_digits_split_is_deterministic():
    pytest.importorskip("sklearn")
    (x_train, y_train), (x_test, y_test) = data.load_digits(seed=0)
    assert x_train.shape == (1438, 8, 8) and x_test.shape == (359, 8, 8)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.uint8
    assert x_train.max() == 16 and set(np.unique(y_test)) == set(range(10))
    (x2, _), _ = data.load_digits(seed=0)
    np.testing.assert_array_equal(x_train, x2)
    (x3, _), _ = data.load_digits(seed=1)
    assert not np.array_equal(x_train, x3)
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits(test_fraction=1.0)


def test_load_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install funcnn\[digits\]"):
        data.load_digits()


def test_recompressed_mnist_with_one_pixel_changed_is_rejected(tmp_path):
    """A recompressed MNIST file must match the canonical decompressed sha256: the weaker
    checks (label counts, mean pixel) cannot see one changed pixel."""
    import gzip

    spec = data.MNIST.test_labels
    labels = np.repeat(np.arange(10, dtype=np.uint8), spec.class_counts)
    raw = np.array([0, 0, 8, 1, 0, 0, 0x27, 0x10], np.uint8).tobytes() + labels.tobytes()
    blob = gzip.compress(raw)   # right shape and label counts, not the canonical file
    with pytest.raises(ValueError, match="differ from the published file"):
        data.mnist.verified_array(blob, spec, "t10k-labels-idx1-ubyte")
