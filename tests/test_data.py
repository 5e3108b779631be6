import gzip
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelfoundry.config import DataSection
from modelfoundry.data import load_splits
from modelfoundry.data.augment import augment_images


def test_digits_split_is_deterministic_disjoint_and_stratified():
    a = load_splits(DataSection(dataset="digits"))
    b = load_splits(DataSection(dataset="digits"))
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert a.x_train.shape[1:] == (1, 8, 8) and len(a.x_train) + len(a.x_test) == 1797
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    train_rows = {r.tobytes() for r in a.x_train}
    overlap = sum(r.tobytes() in train_rows for r in a.x_test)
    assert overlap <= 5  # digits has a handful of exact duplicate images, nothing more
    counts = np.bincount(a.y_test, minlength=10)
    assert counts.min() >= 40  # every class in the held-out split
    c = load_splits(DataSection(dataset="digits", seed=1))
    assert not np.array_equal(a.x_test, c.x_test)
    stats = a.stats()
    assert stats["x_mean"] == pytest.approx(float(a.x_train.mean()))  # train split only


def test_mnist_from_the_extra():
    s = load_splits(DataSection(dataset="mnist", limit=1000))
    assert s.x_train.shape == (1000, 1, 28, 28) and s.x_test.shape == (10000, 1, 28, 28)
    assert s.spec.num_classes == 10 and set(np.unique(s.y_test)) == set(range(10))


def test_sunspots_time_ordered_with_persistence_baseline():
    s = load_splits(DataSection(dataset="sunspots", window=20))
    assert s.spec.task == "regression" and s.x_train.shape[1:] == (20, 1)
    # the test targets come after the training targets, and windows slide by one year
    np.testing.assert_array_equal(s.x_test[1, :-1, 0], s.x_test[0, 1:, 0])
    assert s.x_test[0, -1, 0] == s.y_train[-1]
    assert s.extras["persistence_mae"] == pytest.approx(np.abs(s.x_test[:, -1, 0] - s.y_test).mean())


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_any_idx_directory(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    s = load_splits(DataSection(dataset="fashion-mnist", path=str(tmp_path)))
    assert s.x_train.shape == (30, 1, 28, 28) and s.x_test.shape == (10, 1, 28, 28)
    assert s.x_train.max() <= 1.0 and list(s.y_test) == list(range(10))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="has no t10k-labels-idx1-ubyte"):
        load_splits(DataSection(dataset="fashion-mnist", path=str(tmp_path)))
    with pytest.raises(ValueError, match="does not exist"):
        load_splits(DataSection(dataset="fashion-mnist", path=str(tmp_path / "nope")))


def test_parquet_source_and_its_bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    table = pa.table({"a": rng.normal(size=100), "b": rng.normal(size=100), "label": np.arange(100) % 3})
    path = tmp_path / "data.parquet"
    pq.write_table(table, path)
    s = load_splits(DataSection(dataset="parquet", path=str(path), feature_columns=["a", "b"]))
    assert s.spec.task == "classification" and s.spec.num_classes == 3 and s.x_train.shape[1:] == (2,)
    uri = load_splits(DataSection(dataset="parquet", path=f"file://{path}", feature_columns=["a", "b"]))
    np.testing.assert_array_equal(uri.x_test, s.x_test)
    with pytest.raises(ValueError, match=r"has no column\(s\) \['c'\]; it has \['a', 'b', 'label'\]"):
        load_splits(DataSection(dataset="parquet", path=str(path), feature_columns=["a", "c"]))
    with pytest.raises(ValueError, match="cannot read Parquet data"):
        load_splits(DataSection(dataset="parquet", path=str(tmp_path / "none.parquet"), feature_columns=["a"]))
    with pytest.raises(ValueError, match="holds 4 values but the features have 2"):
        load_splits(DataSection(dataset="parquet", path=str(path), feature_columns=["a", "b"], input_shape=[2, 2]))


def test_augmentation_moves_pixels_but_keeps_range():
    x = load_splits(DataSection(dataset="digits")).x_train[:16]
    out = augment_images(x, max_shift=1, max_rotation=10, rng=np.random.default_rng(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out, x)
    same = augment_images(x, max_shift=0, max_rotation=0, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(same, x)


def test_pydocs_text_splits_by_position_with_the_tokenizer_and_a_unigram_baseline():
    from modelfoundry.data.text import CharTokenizer, pydocs_text

    s = load_splits(DataSection(dataset="pydocs", window=64))
    text = pydocs_text()
    tok = CharTokenizer.from_spec(s.spec.tokenizer)
    assert s.spec.kind == "text" and s.spec.task == "language-model" and s.spec.num_classes == len(tok.vocab)
    assert s.x_train.shape[1:] == s.y_train.shape[1:] == (64,) and s.x_train.dtype == np.int64
    assert (s.x_train[:, 1:] == s.y_train[:, :-1]).all()  # targets are the inputs shifted by one
    cut = int(round(len(text) * 0.9))
    assert tok.decode(s.x_train[0].tolist()) == text[:64]
    assert tok.decode(s.x_test[0].tolist()) == text[cut : cut + 64]  # the held-out tail, by position
    assert abs(s.extras["unigram_bpc"] - 4.67) < 0.05
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        tok.encode("\u2603")


def test_user_text_from_a_file_a_uri_and_a_parquet_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = "hello world, the quick brown fox. " * 40
    (tmp_path / "c.txt").write_text(corpus)
    a = load_splits(DataSection(dataset="text", path=str(tmp_path / "c.txt"), window=16))
    b = load_splits(DataSection(dataset="text", path=f"file://{tmp_path}/c.txt", window=16))
    assert a.spec.name == "c" and (a.x_train == b.x_train).all() and a.spec.tokenizer == b.spec.tokenizer
    pq.write_table(pa.table({"body": [corpus[:700], corpus[700:]], "n": [1, 2]}), tmp_path / "t.parquet")
    p = load_splits(DataSection(dataset="text", path=str(tmp_path / "t.parquet"), text_column="body", window=16))
    assert p.spec.num_classes == len(set(corpus)) + 1  # rows are joined by blank lines: "\n" too

    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00 not text")
    for cfg, message in [
        (DataSection(dataset="text", path=str(tmp_path / "none.txt")), "does not exist"),
        (DataSection(dataset="text", path=str(tmp_path)), "is not a file"),
        (DataSection(dataset="text", path=str(tmp_path / "no.parquet"), text_column="b"), "cannot read text data"),
        (DataSection(dataset="text", path=str(tmp_path / "bin.txt")), "is not UTF-8 text"),
        (DataSection(dataset="text", path=str(tmp_path / "t.parquet"), text_column="x"), "has no column 'x'"),
        (DataSection(dataset="text", path=str(tmp_path / "t.parquet"), text_column="n"), "must hold strings"),
        (DataSection(dataset="text", path=str(tmp_path / "c.txt"), window=1000), "fewer than one example"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_splits(cfg)
