"""MNIST and Fashion-MNIST: find the four IDX files, download them if asked, verify, load.

Where the files come from, in order:

1. ``data_dir=``: a folder you already have with the four standard files
   (``.gz`` or uncompressed). funcnn only reads it, never writes or downloads there.
2. Otherwise a cache folder ``<root>/<data set name>``, where ``<root>`` is
   ``cache_dir=``, else ``$FUNCNN_DATA_DIR``, else ``$XDG_CACHE_HOME/funcnn``, else
   ``~/.cache/funcnn``. Missing files are downloaded there from the data set's
   mirrors (stdlib ``urllib`` only) into a temporary file that is renamed into
   place only once verified: a failed or interrupted download leaves nothing behind.

Every file is verified on every load (it costs ~0.05 s): its ``.gz`` must match the
published sha256, or its decompressed bytes the canonical sha256 (some mirrors
recompress); for MNIST the decompressed sha256 is not published with the files, but
is the same in every independent copy, and is what a recompressed copy must match
(so one changed pixel is caught). The weaker checks (shape, label counts per class,
mean pixel) remain for IDX tables that have no decompressed checksum.

The tables are plain frozen dataclasses, so you can load another IDX data set, or
test this code with small fake files, by passing your own :class:`DatasetSpec` to
:func:`load_idx_dataset`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import numpy as np

from .idx import read_idx

Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class IdxFile:
    """One file of a data set and what a good copy of it looks like.

    ``name`` is the file name without ``.gz``; ``shape`` the uint8 array it holds.
    ``gz_sha256``/``gz_size`` describe the published ``.gz``, ``raw_sha256`` the
    decompressed bytes. Without ``raw_sha256``, a file whose ``.gz`` checksum does
    not match is checked by the weaker ``class_counts`` (labels per class) and
    ``pixel_mean`` (mean of the images / 255, to within ``mean_tol``).
    """

    name: str
    shape: tuple[int, ...]
    gz_sha256: str | None = None
    gz_size: int | None = None
    raw_sha256: str | None = None
    class_counts: tuple[int, ...] | None = None
    pixel_mean: float | None = None
    mean_tol: float = 0.002


@dataclass(frozen=True)
class DatasetSpec:
    """A data set of four IDX files: cache subfolder ``name``, download ``mirrors``.

    Each mirror is a base URL ending in ``/``; a file's URL is base + name + ``.gz``.
    """

    name: str
    mirrors: tuple[str, ...]
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile

    @property
    def files(self) -> tuple[IdxFile, IdxFile, IdxFile, IdxFile]:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)


class ChecksumError(ValueError):
    """A data file's contents differ from the published ones."""


# Published by Zalando Research (github.com/zalandoresearch/fashion-mnist); the
# decompressed checksums are those of the canonical files.
FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    train_images=IdxFile(
        "train-images-idx3-ubyte", (60000, 28, 28),
        gz_sha256="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        gz_size=26421880,
        raw_sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    train_labels=IdxFile(
        "train-labels-idx1-ubyte", (60000,),
        gz_sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        gz_size=29515,
        raw_sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    test_images=IdxFile(
        "t10k-images-idx3-ubyte", (10000, 28, 28),
        gz_sha256="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        gz_size=4422102,
        raw_sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    test_labels=IdxFile(
        "t10k-labels-idx1-ubyte", (10000,),
        gz_sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        gz_size=5148,
        raw_sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
)

# The original files of LeCun, Cortes and Burges, as the mirrors serve them. The
# decompressed files' sha256 (the same across independent public copies) verifies a
# recompressed copy as strictly as the .gz checksum does the original download.
MNIST = DatasetSpec(
    name="mnist",
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    train_images=IdxFile(
        "train-images-idx3-ubyte", (60000, 28, 28),
        gz_sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        raw_sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        gz_size=9912422, pixel_mean=0.1307),
    train_labels=IdxFile(
        "train-labels-idx1-ubyte", (60000,),
        gz_sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        raw_sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        gz_size=28881,
        class_counts=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)),
    test_images=IdxFile(
        "t10k-images-idx3-ubyte", (10000, 28, 28),
        gz_sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        raw_sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        gz_size=1648877, pixel_mean=0.1325),
    test_labels=IdxFile(
        "t10k-labels-idx1-ubyte", (10000,),
        gz_sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        raw_sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        gz_size=4542,
        class_counts=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)),
)


def default_cache_dir() -> Path:
    """The cache root: ``$FUNCNN_DATA_DIR``, else ``$XDG_CACHE_HOME/funcnn``, else
    ``~/.cache/funcnn``. Each data set gets its own subfolder under it."""
    if os.environ.get("FUNCNN_DATA_DIR"):
        return Path(os.environ["FUNCNN_DATA_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "funcnn"
    return Path.home() / ".cache" / "funcnn"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The data sets funcnn knows, with their loaders, to recognise one's file given for another.
_KNOWN = ((MNIST, "data.load_mnist"), (FASHION_MNIST, "data.load_fashion_mnist"))


def _known_elsewhere(spec: IdxFile, gz_sha256: str | None, raw_sha256: str) -> str | None:
    """Which other known data set's file these bytes are (by checksum), as advice."""
    for dataset, loader in _KNOWN:
        files = dataset.files
        if any(f is spec for f in files):  # the data set being loaded: not "another"
            continue
        for f in files:
            if raw_sha256 == f.raw_sha256 or (gz_sha256 and gz_sha256 == f.gz_sha256):
                return (f"this is {dataset.name}'s {f.name}, not the file asked for: the "
                        f"file is fine, keep it. Fix: pass the folder of the data set you "
                        f"want, or load this one with {loader}")
    return None


def verified_array(blob: bytes, spec: IdxFile, name: str, fix: str | None = None) -> np.ndarray:
    """Verify the bytes ``blob`` of a file against ``spec`` and return its array.

    Raises :class:`ChecksumError` (naming ``name``, expected vs got, and ``fix``, the
    advice to give) when the contents are wrong, ``ValueError`` when the file is not
    valid IDX at all.
    """
    is_gz = blob[:2] == b"\x1f\x8b"
    # Hash the .gz only when its size matches: a recompressed copy cannot match anyway.
    if (is_gz and spec.gz_sha256 and len(blob) == (spec.gz_size or len(blob))
            and _sha256(blob) == spec.gz_sha256):
        return read_idx(blob, name=name)
    hasher = hashlib.sha256()
    arr = read_idx(blob, name=name, hasher=hasher)
    if fix is None and hasher.hexdigest() != spec.raw_sha256:  # a local file
        other = _known_elsewhere(spec, _sha256(blob) if is_gz else None, hasher.hexdigest())
        if other is not None:
            raise ChecksumError(f"{name}: {other}")
    fix = fix or (f"Fix: delete {name} and run again to download a fresh copy; if that "
                  f"fails too, your source serves a different file: use another mirror")
    if arr.shape != spec.shape or arr.dtype != np.uint8:
        raise ChecksumError(
            f"{name}: expected uint8 data of shape {spec.shape}, got {arr.dtype} of shape "
            f"{arr.shape} (the wrong file, or a different data set?). {fix}")
    if spec.raw_sha256 is not None:
        if hasher.hexdigest() != spec.raw_sha256:
            got_gz = _sha256(blob) if is_gz else "(not gzip-compressed)"
            raise ChecksumError(
                f"{name}: contents differ from the published file. Expected sha256 "
                f"{spec.gz_sha256} of the .gz or {spec.raw_sha256} of the decompressed "
                f"bytes; got {got_gz} and {hasher.hexdigest()}. {fix}")
        return arr
    # No decompressed checksum known (MNIST): weaker sanity checks, if there are any.
    if spec.gz_sha256 and spec.class_counts is None and spec.pixel_mean is None:
        raise ChecksumError(
            f"{name}: expected sha256 {spec.gz_sha256} of the .gz, got "
            f"{_sha256(blob) if is_gz else '(not gzip-compressed)'}, and no other "
            f"checksum is known for this file. {fix}")
    if spec.class_counts is not None:
        counts = np.bincount(arr.reshape(-1), minlength=len(spec.class_counts))
        if tuple(counts.tolist()) != spec.class_counts:
            raise ChecksumError(
                f"{name}: labels per class are {counts.tolist()}, expected "
                f"{list(spec.class_counts)} (a file of another data set?). {fix}")
    if spec.pixel_mean is not None:
        mean = float(arr.mean()) / 255
        if abs(mean - spec.pixel_mean) > spec.mean_tol:
            raise ChecksumError(
                f"{name}: mean pixel value / 255 is {mean:.4f}, expected {spec.pixel_mean} "
                f"+- {spec.mean_tol} (a file of another data set?). {fix}")
    return arr


def fetch(url: str, folder: Path, timeout: float) -> Path:
    """Download ``url`` into a new temporary file in ``folder`` and return its path.

    On any failure (network, disk, Ctrl-C) the temporary file is removed and the
    error propagates, so no partial file is ever left.
    """
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out, 1 << 20)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def _urls(dataset: DatasetSpec, f: IdxFile) -> list[str]:
    return [base + f.name + ".gz" for base in dataset.mirrors]


def _download(dataset: DatasetSpec, f: IdxFile, folder: Path, timeout: float,
              verbose: bool, errors: list[str]) -> np.ndarray | None:
    """Try each mirror in turn; the verified array, or ``None`` (reasons in ``errors``)."""
    for url in _urls(dataset, f):
        if verbose:
            print(f"funcnn: downloading {url}", file=sys.stderr)
        try:
            tmp = fetch(url, folder, timeout)
        except (OSError, http.client.HTTPException, ValueError) as err:
            errors.append(f"{url}: {err}")
            continue
        try:
            blob = tmp.read_bytes()
            arr = verified_array(blob, f, name=url, fix="This mirror serves a different file.")
            suffix = ".gz" if blob[:2] == b"\x1f\x8b" else ""
            os.replace(tmp, folder / (f.name + suffix))  # atomic: whole file or none
            return arr
        except ValueError as err:
            errors.append(str(err))
        finally:
            tmp.unlink(missing_ok=True)
    return None


def _missing(dataset: DatasetSpec, folder: Path, missing: list[IdxFile], why: str,
             errors: list[str]) -> FileNotFoundError:
    """An error listing exactly which files to put where, and where to get them."""
    lines = [f"{dataset.name}: {len(missing)} file(s) missing from {folder} ({why}).",
             f"Put these files in {folder} (gzip-compressed or not):"]
    for f in missing:
        lines.append(f"  {f.name}.gz   from " + "  or  ".join(_urls(dataset, f)))
    if errors:
        lines.append("Download errors:")
        lines += [f"  {e}" for e in errors]
    return FileNotFoundError("\n".join(lines))


# scale= names -> (what it gives, how). The expressions are the books' own, so a script
# that used to write them gets the same float32 values, bit for bit.
SCALES = {
    "unit": "float32 in [0, 1]: x / 255 (Nielsen, and most examples)",
    "symmetric": "float32 in [-1, 1]: (x - 127.5) / 127.5 (NNFS chapter 19)",
}


def _check_image_options(flatten: bool, scale: bool | str | None, where: str) -> str | None:
    """Validates ``flatten`` and ``scale``; returns the scale's name (or ``None``)."""
    if not isinstance(flatten, (bool, np.bool_)):
        raise TypeError(f"{where}: flatten must be True or False; got {flatten!r}")
    if scale is True:
        return "unit"
    if scale is None or scale is False:
        return None
    if not isinstance(scale, str) or scale not in SCALES:
        raise ValueError(f"{where}: scale must be None (uint8 as stored), True or 'unit' "
                         f"([0, 1]) or 'symmetric' ([-1, 1]); got {scale!r}")
    return scale


def _check_pixels(images: np.ndarray) -> None:
    """``scale=`` maps stored 0..255 pixels: integer images in that range, nothing else
    (float images are most likely scaled already, and would be scaled twice)."""
    if images.dtype.kind not in "iu":
        raise ValueError(
            f"prepare_images: scale= maps the stored 0..255 integer pixels to float32, but "
            f"these images are {images.dtype} (already scaled?). Fix: pass scale=None for "
            "images already scaled, or images.astype(np.uint8) if they hold 0..255")
    if images.dtype != np.uint8 and images.size and (images.min() < 0 or images.max() > 255):
        raise ValueError(
            f"prepare_images: scale= maps 0..255 pixels, but these images hold values in "
            f"[{images.min()}, {images.max()}]. Fix: pass uint8 images as stored")


def prepare_images(images: np.ndarray, *, flatten: bool = False,
                   scale: bool | str | None = None) -> np.ndarray:
    """Images as a model takes them: ``flatten`` to ``(N, H*W)`` rows (for ``nn.dense``)
    and ``scale`` the 0..255 pixels to float32 (see :data:`SCALES`): ``"unit"`` (or
    ``True``) gives ``x / 255`` in [0, 1], ``"symmetric"`` gives ``(x - 127.5) / 127.5``
    in [-1, 1]. With neither, the array comes back unchanged (uint8)."""
    mode = _check_image_options(flatten, scale, "prepare_images")
    images = np.asarray(images)
    if images.ndim == 0:
        raise ValueError("prepare_images: images must be an array of shape (N, H, W) (or "
                         f"(N, ...)); got a scalar {images!r}")
    if mode is not None:
        _check_pixels(images)
    x = images.reshape(len(images), int(np.prod(images.shape[1:]))) if flatten else images
    if mode == "unit":
        return x.astype(np.float32) / 255.0
    if mode == "symmetric":
        return (x.astype(np.float32) - 127.5) / 127.5
    return x


def load_idx_dataset(dataset: DatasetSpec, data_dir: str | os.PathLike | None = None, *,
                     cache_dir: str | os.PathLike | None = None, download: bool = True,
                     timeout: float = 60.0, verbose: bool = True, flatten: bool = False,
                     scale: bool | str | None = None) -> Arrays:
    """Load the four verified files of ``dataset``: ``(x_train, y_train), (x_test, y_test)``.

    See the module docstring for where files are looked for. ``download=False``
    never touches the network; ``timeout`` is per connection, in seconds;
    ``verbose`` prints one line to stderr per download. ``flatten`` and ``scale``
    prepare the images (:func:`prepare_images`); labels stay as stored.
    """
    _check_image_options(flatten, scale, f"load {dataset.name}")
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"load {dataset.name}: data_dir must be a folder path (str or "
                            f"Path), got {type(data_dir).__name__}")
        folder, download = Path(data_dir).expanduser(), False
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"load {dataset.name}: data_dir {folder} is a file, not a "
                                     "folder; pass the folder that holds the four IDX files")
        why = ("funcnn only reads data_dir, never downloads into it; leave data_dir out "
               "to download into the cache instead")
    else:
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise TypeError(f"load {dataset.name}: cache_dir must be a folder path (str or "
                            f"Path), got {type(cache_dir).__name__}")
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        folder = root / dataset.name
        why = "the download failed: no network?" if download else "download=False"
    arrays: list[np.ndarray] = []
    missing: list[IdxFile] = []
    errors: list[str] = []
    for f in dataset.files:
        path = next((p for p in (folder / (f.name + ".gz"), folder / f.name) if p.is_file()), None)
        if path is not None:
            arrays.append(verified_array(path.read_bytes(), f, name=str(path)))
            continue
        arr = None
        if download:
            folder.mkdir(parents=True, exist_ok=True)
            arr = _download(dataset, f, folder, timeout, verbose, errors)
        if arr is None:
            missing.append(f)
        else:
            arrays.append(arr)
    if missing:
        raise _missing(dataset, folder, missing, why, errors)
    x_train, y_train, x_test, y_test = arrays
    x_train, x_test = (prepare_images(x, flatten=flatten, scale=scale) for x in (x_train, x_test))
    return (x_train, y_train), (x_test, y_test)


def load_mnist(data_dir: str | os.PathLike | None = None, *,
               cache_dir: str | os.PathLike | None = None, download: bool = True,
               flatten: bool = False, scale: bool | str | None = None) -> Arrays:
    """MNIST handwritten digits: ``(x_train, y_train), (x_test, y_test)``.

    By default images are uint8 of shape (60000, 28, 28) and (10000, 28, 28), as
    stored; labels uint8 digits 0-9 of shape (60000,) and (10000,).
    ``flatten=True`` gives rows of 784 pixels (``nn.dense`` input);
    ``scale="unit"`` (or ``True``) float32 pixels ``x / 255`` in [0, 1],
    ``scale="symmetric"`` ``(x - 127.5) / 127.5`` in [-1, 1]::

        (x, y), (x_test, y_test) = data.load_mnist(flatten=True, scale="unit")  # (60000, 784)

    A convolutional net takes channels-last images: add the channel axis,
    ``x[..., None]`` (60000, 28, 28, 1). Unscaled uint8 pixels (0-255) train badly
    with the usual initialisations; pass ``scale``.

    See :func:`load_idx_dataset` for where the files come from.
    """
    return load_idx_dataset(MNIST, data_dir, cache_dir=cache_dir, download=download,
                            flatten=flatten, scale=scale)


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, *,
                       cache_dir: str | os.PathLike | None = None,
                       download: bool = True, flatten: bool = False,
                       scale: bool | str | None = None) -> Arrays:
    """Fashion-MNIST clothing images: ``(x_train, y_train), (x_test, y_test)``.

    Same shapes, dtypes and ``flatten`` / ``scale`` options as :func:`load_mnist`;
    labels 0-9 are T-shirt/top, trouser, pullover, dress, coat, sandal, shirt,
    sneaker, bag, ankle boot.
    """
    return load_idx_dataset(FASHION_MNIST, data_dir, cache_dir=cache_dir, download=download,
                            flatten=flatten, scale=scale)
