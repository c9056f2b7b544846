"""MNIST / Fashion-MNIST from local IDX files: never downloaded at run time.

Where the files are looked for: the ``data_dir`` argument (CLI ``--set params.data_dir=...``)
or else ``$PINNCTL_DATA`` (either one is then the only place), or else ``shared/data`` in
a folder above the source checkout or the working directory (``../shared/data``). Each dataset lives in its own folder (``mnist/``, ``fashion-mnist/``)
with the four standard files, gzip-compressed (``.gz``) or not. A missing or corrupt file
is a one-line error naming the expected path and how to get the file.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import PinnctlError

DATASETS = {"mnist": "mnist", "fashion-mnist": "fashion-mnist"}
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MAGIC = {1: 0x00000801, 3: 0x00000803}  # IDX magic by number of dimensions (uint8 data)
HOW_TO_GET = ("get the official files (e.g. from the dataset's home page) and put them there, "
              "or point $PINNCTL_DATA / params.data_dir at a folder holding mnist/ and fashion-mnist/")


def default_roots(data_dir: str | Path | None = None) -> list[Path]:
    """An explicit ``data_dir`` or ``$PINNCTL_DATA`` is the only place looked at (an override,
    not a hint); otherwise ``shared/data`` in any folder above the package or the working
    directory (the project keeps it next to the checkout: ``../shared/data``)."""
    if data_dir:
        return [Path(data_dir)]
    if os.environ.get("PINNCTL_DATA"):
        return [Path(os.environ["PINNCTL_DATA"])]
    here, cwd = Path(__file__).resolve().parent, Path.cwd().resolve()
    roots = [d / "shared" / "data" for d in (*here.parents, cwd, *cwd.parents)]
    return list(dict.fromkeys(roots))


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """One IDX file (uint8 payload) as an array; rejects bad magic, truncation and trailing bytes."""
    path = Path(path)
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise PinnctlError(f"cannot read {path}: {e}") from None
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise PinnctlError(f"{path} is not an IDX file ({len(raw)} bytes, shorter than its header)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != MAGIC[ndim]:
        raise PinnctlError(f"{path} is not a {ndim}-d uint8 IDX file (magic {magic:#010x}, expected {MAGIC[ndim]:#010x})")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = head + int(np.prod(dims))
    if len(raw) != expected:
        raise PinnctlError(f"{path} is corrupt: header says {dims} ({expected} bytes), file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def find_file(dataset: str, stem: str, data_dir: str | Path | None = None) -> Path:
    if dataset not in DATASETS:
        raise PinnctlError(f"unknown dataset '{dataset}'; known: {', '.join(DATASETS)}")
    roots = default_roots(data_dir)
    for root in roots:
        for name in (stem + ".gz", stem):
            path = root / DATASETS[dataset] / name
            if path.exists():
                return path
    also = f" (and {len(roots) - 1} more places: shared/data above the checkout and the working directory)" if len(roots) > 1 else ""
    raise PinnctlError(f"missing data file: expected {roots[0] / DATASETS[dataset] / (stem + '.gz')}{also}; {HOW_TO_GET}")


@lru_cache(maxsize=8)
def load(dataset: str, split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 in [0, 1], shape (N, 784), and labels as int64, shape (N,)."""
    if split not in FILES:
        raise PinnctlError(f"unknown split '{split}'; known: {', '.join(FILES)}")
    images_stem, labels_stem = FILES[split]
    images = read_idx(find_file(dataset, images_stem, data_dir), 3)
    labels = read_idx(find_file(dataset, labels_stem, data_dir), 1)
    if images.shape[0] != labels.shape[0]:
        raise PinnctlError(f"{dataset} {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.max(initial=0) > 9:
        raise PinnctlError(f"{dataset} {split}: labels outside 0–9 (max {labels.max()})")
    return (images.reshape(images.shape[0], -1).astype(np.float32) / 255.0), labels.astype(np.int64)
