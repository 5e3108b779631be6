"""Text for the language-model family: a character-level tokenizer (stored in the checkpoint),
the built-in corpus (the Python documentation that ships with the standard library,
`pydoc_data.topics`, ~465 KB) and user text (a text file, or a column of a Parquet file, local
or a URI), cut into training examples with a held-out split by position: the last
`test_fraction` of the text, never seen in training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelfoundry.data.splits import DatasetSpec, Splits

MAX_VOCAB = 4096  # distinct characters; beyond it the text is not one a char model should learn
MAX_TEXT_BYTES = 1 << 30


class CharTokenizer:
    """One id per distinct character, in code-point order. Unknown characters are refused
    (`unknown`), never mapped silently."""

    def __init__(self, vocab: str) -> None:
        if not vocab or len(set(vocab)) != len(vocab):
            raise ValueError("a tokenizer vocabulary is a non-empty string of distinct characters")
        self.vocab = vocab
        self.ids = {c: i for i, c in enumerate(vocab)}

    @classmethod
    def from_spec(cls, spec: dict) -> CharTokenizer:
        if spec.get("kind") != "char":
            raise ValueError(f"unknown tokenizer kind {spec.get('kind')!r}; this version reads 'char'")
        return cls(spec["vocab"])

    def spec(self) -> dict:
        return {"kind": "char", "vocab": self.vocab}

    def unknown(self, text: str) -> list[str]:
        return sorted({c for c in text if c not in self.ids})

    def encode(self, text: str) -> list[int]:
        missing = self.unknown(text)
        if missing:
            raise ValueError(f"characters not in the model's vocabulary: {missing[:10]!r}")
        return [self.ids[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids)


def pydocs_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def read_text(path: str, column: str | None = None) -> str:
    """A UTF-8 text file, or with `column` the rows of that Parquet column joined by blank lines."""
    import pyarrow.fs as pafs

    try:
        fs, where = (
            pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), str(Path(path).resolve()))
        )
        if column:
            import pyarrow.parquet as pq

            table = pq.read_table(where, filesystem=fs, columns=None)
            if column not in table.column_names:
                raise ValueError(f"Parquet data {path!r} has no column {column!r}; it has {table.column_names}")
            rows = table.column(column).to_pylist()
            if not all(isinstance(r, str) for r in rows):
                raise ValueError(f"column {column!r} of {path!r} must hold strings only")
            return "\n\n".join(rows)
        info = fs.get_file_info(where)
        if info.type == pafs.FileType.NotFound:
            raise ValueError(f"text data {path!r} does not exist")
        if info.type != pafs.FileType.File:
            raise ValueError(f"text data {path!r} is not a file")
        if info.size > MAX_TEXT_BYTES:
            raise ValueError(f"text data {path!r} is {info.size} bytes; the limit is {MAX_TEXT_BYTES}")
        with fs.open_input_stream(where) as f:
            raw = f.read()
    except OSError as err:
        raise ValueError(f"cannot read text data {path!r}: {err}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"text data {path!r} is not UTF-8 text: {err}") from None


def windows(ids: np.ndarray, length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, next-token targets), each (n, length): ids[i:i+length] and ids[i+1:i+length+1]."""
    starts = np.arange(0, len(ids) - length - 1 + 1, stride)
    idx = starts[:, None] + np.arange(length)[None, :]
    return ids[idx], ids[idx + 1]


def unigram_bits(train: np.ndarray, test: np.ndarray, vocab_size: int) -> float:
    """Bits per character of the test text under the training text's character frequencies
    (add-one smoothed): the baseline a language model has to beat."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log2(counts / counts.sum())
    return float(-logp[test].mean())


def text_splits(name: str, text: str, length: int, test_fraction: float) -> Splits:
    """Training examples of `length` characters (every length/2: each character is seen twice
    an epoch, at two alignments), the held-out tail in non-overlapping examples."""
    vocab = "".join(sorted(set(text)))
    if len(vocab) > MAX_VOCAB:
        raise ValueError(f"text {name!r} has {len(vocab)} distinct characters; a char model takes at most {MAX_VOCAB}")
    tokenizer = CharTokenizer(vocab)
    ids = np.fromiter((tokenizer.ids[c] for c in text), dtype=np.int64, count=len(text))
    cut = int(round(len(ids) * (1 - test_fraction)))
    train, test = ids[:cut], ids[cut:]
    for part, what in ((train, "training"), (test, "held-out")):
        if len(part) < length + 1:
            raise ValueError(
                f"text {name!r}: the {what} part has {len(part)} characters, fewer than one example of "
                f"{length + 1} (data.window + 1); use more text or a smaller window"
            )
    x_train, y_train = windows(train, length, max(1, length // 2))
    x_test, y_test = windows(test, length, length)
    spec = DatasetSpec(name, "language-model", (length,), len(vocab), "text", tokenizer.spec())
    extras = {"unigram_bpc": unigram_bits(train, test, len(vocab)), "chars": len(text)}
    return Splits(spec, x_train, y_train, x_test, y_test, extras)
