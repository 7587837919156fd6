import pytest
from pydantic import Field

from terrasynth.config import StrictModel, config_hash, load_config, save_resolved
from terrasynth.errors import UserError


class Train(StrictModel):
    steps: int = 10
    lr: float = 1e-3


class Cfg(StrictModel):
    seed: int = 0
    train: Train = Field(default_factory=Train)


def test_precedence_file_flags_sets(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 1\ntrain: {steps: 5}\n")
    cfg = load_config(Cfg, f, flags={"seed": 2, "train": {"lr": None}}, sets=["train.steps=100"])
    assert cfg.seed == 2 and cfg.train.steps == 100 and cfg.train.lr == 1e-3


def test_typo_names_key_file_and_allowed(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {stpes: 5}\n")
    with pytest.raises(UserError) as e:
        load_config(Cfg, f)
    msg = str(e.value)
    assert "train.stpes" in msg and str(f) in msg and "lr, steps" in msg and "\n" not in msg


def test_bad_value_and_bad_set(tmp_path):
    with pytest.raises(UserError, match="train.steps"):
        load_config(Cfg, sets=["train.steps=abc"])
    with pytest.raises(UserError, match="KEY=VALUE"):
        load_config(Cfg, sets=["nonsense"])
    with pytest.raises(UserError, match="not found"):
        load_config(Cfg, tmp_path / "missing.yaml")


def test_hash_and_resolved(tmp_path):
    a, b = Cfg(), Cfg(seed=1)
    assert config_hash(a) == config_hash(Cfg()) != config_hash(b)
    p = save_resolved(b, tmp_path)
    assert load_config(Cfg, p) == b


def test_set_words_that_yaml11_reads_as_booleans_stay_words():
    from terrasynth.config import parse_sets

    assert parse_sets(["a=no", "b=false", "c=On", "d=[1,2]"]) == {"a": "no", "b": False, "c": "On", "d": [1, 2]}
