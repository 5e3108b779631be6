from pathlib import Path

import pytest

from modelfoundry.config import ConfigError, dump_config, load_config, parse_config, with_overrides
from modelfoundry.models import REGISTRY, build_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "jobs" / "configs").glob("*.yaml"))
BASE = {"name": "t", "model": {"family": "cnn", "preset": "tiny"}, "data": {"dataset": "digits"}}


def test_every_shipped_config_loads_and_builds():
    assert len(CONFIGS) >= 9
    for path in CONFIGS:
        if path.name.startswith("tune_"):
            continue  # sweep configs are tested with tuning
        if path.name.startswith("compress_"):
            from modelfoundry.compression.config import load_compress

            assert load_compress(path).method in ("quantize", "prune", "distill")
            continue
        cfg = load_config(path)
        assert cfg.name and cfg.model.family in REGISTRY
        build_model(cfg.model.family, cfg.model.preset, **cfg.model.params)
        assert parse_config(cfg.to_dict()) == cfg  # round trip


def test_overrides_and_round_trip():
    cfg = parse_config({**BASE, "model": {"family": "cnn", "preset": "tiny", "dropout": 0.3}})
    assert cfg.model.params == {"dropout": 0.3}
    cfg2 = with_overrides(cfg, {"train.epochs": 3, "model.hidden": 16})
    assert cfg2.train.epochs == 3 and cfg2.model.params == {"dropout": 0.3, "hidden": 16}
    assert "dropout: 0.3" in dump_config(cfg2)
    with pytest.raises(ValueError, match="frozen"):
        cfg2.train.epochs = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "patch, fragment",
    [
        (
            {"model": {"family": "gpt"}},
            "model.family: unknown model family 'gpt'; choose one of ['cnn', 'mlp', 'rnn', 'transformer', 'vae']",
        ),
        (
            {"model": {"family": "cnn", "preset": "huge"}},
            "unknown preset 'huge' for cnn; choose one of ['tiny', 'default']",
        ),
        ({"model": {"family": "cnn", "dropout": 2}}, "dropout: Input should be less than 1 (got 2)"),
        ({"model": {"family": "transformer"}}, "family transformer does not learn from image data (dataset digits)"),
        (
            {"model": {"family": "transformer", "vocab_size": 5}, "data": {"dataset": "pydocs"}},
            "vocab_size is set from the dataset",
        ),
        (
            {"model": {"family": "transformer", "preset": "tiny"}, "data": {"dataset": "pydocs", "window": 65}},
            "data.window 65 exceeds the model's context 64",
        ),
        ({"model": {"family": "mlp"}, "data": {"dataset": "text"}}, "dataset text needs path"),
        ({"data": {"dataset": "pydocs", "path": "x.txt"}}, "dataset pydocs is built in and takes no path"),
        ({"model": {"family": "cnn", "widht": 3}}, "unknown field 'widht' for family cnn"),
        ({"model": {"family": "cnn", "input_shape": [1, 8, 8]}}, "input_shape is set from the dataset"),
        ({"data": {"dataset": "imagenet"}}, "data.dataset: Input should be"),
        ({"data": {"dataset": "parquet"}}, "dataset parquet needs path"),
        ({"train": {"epochs": 0}}, "train.epochs: Input should be greater than 0 (got 0)"),
        ({"train": {"epochs": "ten"}}, "train.epochs: Input should be a valid integer"),
        ({"train": {"lr": -1}}, "train.lr: Input should be greater than 0"),
        ({"train": {"epochz": 3}}, "train.epochz: unknown field"),
        ({"extra": 1}, "extra: unknown field"),
        ({"name": "bad name!"}, "name: String should match pattern"),
        (
            {"model": {"family": "vae"}, "data": {"dataset": "sunspots"}},
            "family vae does not learn from series data (dataset sunspots)",
        ),
        ({"data": {"dataset": "digits", "augment": True, "in_memory": True}}, "in_memory: true cannot hold augmented"),
    ],
)
def test_bad_config_names_the_field(patch, fragment):
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, **patch})
    assert fragment in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_elastic_workers_keep_the_global_batch_and_refuse_what_cannot_resize(tmp_path):
    base = {"name": "e", "model": {"family": "mlp"}, "data": {"dataset": "digits"}}
    cfg = parse_config({**base, "train": {"batch_size": 32, "workers": {"min": 1, "max": 4}}})
    assert cfg.train.worker_bounds == (1, 4) and cfg.train.workers.resize_interval_s == 60.0
    assert [cfg.train.batch_per_worker(w) for w in (1, 2, 4)] == [128, 64, 32]  # 128 in all
    fixed = parse_config({**base, "train": {"batch_size": 32, "num_workers": 2}})
    assert fixed.train.worker_bounds == (2, 2) and fixed.train.batch_per_worker(2) == 32
    bad = [
        ({"workers": {"min": 3, "max": 2}}, "max (2) must be at least min (3)"),
        ({"workers": {"min": 1, "max": 2}, "num_workers": 2}, "not both"),
        ({"workers": {"min": 1, "max": 2}, "strategy": "fsdp"}, "needs strategy ddp"),
        ({"workers": {"min": 0, "max": 2}}, "workers.min"),
    ]
    for train, fragment in bad:
        with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            parse_config({**base, "train": train})
    held = parse_config(
        {**base, "data": {"dataset": "digits", "in_memory": True}, "train": {"workers": {"min": 1, "max": 2}}}
    )
    assert held.train.global_order  # the whole split in memory, one order for every world size
    again = with_overrides(cfg, {"train.epochs": 3})  # an elastic config round-trips (no num_workers beside it)
    assert again.train.workers == cfg.train.workers and "num_workers" not in again.to_dict()["train"]


def test_the_workers_flag_takes_a_count_or_a_range_and_replaces_the_other_field(tmp_path):
    import argparse

    from modelfoundry.cli.training import add_train_args, train_overrides

    path = tmp_path / "job.yaml"
    path.write_text("name: e\nmodel: {family: mlp}\ndata: {dataset: digits}\ntrain: {num_workers: 2}\n")
    parser = argparse.ArgumentParser()
    add_train_args(parser)
    elastic = load_config(path, train_overrides(parser.parse_args(["--config", str(path), "--workers", "1-3"])))
    assert elastic.train.worker_bounds == (1, 3) and elastic.train.workers is not None
    fixed = load_config(path, train_overrides(parser.parse_args(["--config", str(path), "--workers", "3"])))
    assert fixed.train.worker_bounds == (3, 3) and fixed.train.workers is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", str(path), "--workers", "two"])
    snap = ["--config", str(path), "--workers", "1-2", "--checkpoint-every-steps", "25"]
    snapped = load_config(path, train_overrides(parser.parse_args(snap)))
    assert snapped.train.checkpoint_every_steps == 25 and snapped.train.global_order
