import tomllib
from pathlib import Path

import pytest

from speechalign.config import Config, ConfigError, from_dict, load_config, save_config

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_config_file_is_every_knob_with_the_demo_defaults():
    shipped = tomllib.loads((REPO / "speechalign.toml").read_text())
    assert from_dict(shipped) == Config()
    assert shipped.keys() == Config().to_dict().keys()
    for section, values in Config().to_dict().items():
        assert shipped[section].keys() == values.keys(), f"[{section}] in speechalign.toml is missing knobs"


def test_toml_round_trip_and_overrides(tmp_path):
    cfg = load_config(overrides=["train.learning_rate=1e-4", "generate.k=8", "train.loss_type=sigmoid,sft",
                                 "model.speaker_in_prompt=false", "train.loss_weights=1,0.5"], workdir=str(tmp_path))
    assert (cfg.train.learning_rate, cfg.generate.k, cfg.train.loss_type) == (1e-4, 8, ["sigmoid", "sft"])
    assert cfg.train.loss_weights == [1.0, 0.5] and all(type(w) is float for w in cfg.train.loss_weights)
    assert load_config(overrides=["train.loss_weights=[2, 1]"]).train.loss_weights == [2.0, 1.0]
    assert cfg.model.speaker_in_prompt is False
    assert from_dict(tomllib.loads(cfg.to_toml())) == cfg


def test_workdir_config_is_read_back_and_overridden_per_command(tmp_path):
    save_config(load_config(overrides=["generate.k=6"], workdir=str(tmp_path)))
    assert load_config(workdir=str(tmp_path)).generate.k == 6
    assert load_config(overrides=["generate.k=5"], workdir=str(tmp_path)).generate.k == 5
    assert load_config(workdir=str(tmp_path)).store_url == f"sqlite:///{tmp_path / 'store.db'}"


@pytest.mark.parametrize("override, message", [
    ("generate.k=abc", "generate.k = 'abc' is not a int"),
    ("generat.k=3", "unknown section [generat]"),
    ("generate.kk=3", "unknown key generate.kk"),
    ("generate", "expected section.key=value"),
    ("train.loss_weights=1,x", "train.loss_weights[1] = 'x' is not a number"),
    ("score.metrics=[1, 2]", "score.metrics[0] = 1 is not a str"),
    ("train.loss_type=3", "train.loss_type = 3 is not a list of str"),
])
def test_bad_knobs_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(overrides=[override])


def test_choices_are_checked_when_the_config_is_read():
    with pytest.raises(ConfigError, match=r"train.reference = 'bogus'; it can be 'previous', 'initial'"):
        load_config(overrides=["train.reference=bogus"])
    with pytest.raises(ConfigError, match="pairs.criterion = 'best'; it can be golden_vs_synthetic"):
        load_config(overrides=["pairs.criterion=best"])
