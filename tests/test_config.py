import tomllib
from pathlib import Path

import pytest

from speechalign.config import Config, ConfigError, load_config, render_toml, save_config
from speechalign.runtime.preflight import check_names

pytestmark = pytest.mark.pure  # make test-fast

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_config_file_is_the_config_model_rendered():
    shipped = (REPO / "speechalign.toml").read_text()
    assert shipped == render_toml(Config()), "stale: `speechalign config --defaults > speechalign.toml`"
    assert Config.model_validate(tomllib.loads(shipped)) == Config()
    for section, values in Config().to_dict().items():
        for key in values:  # every knob is described, and the description is in the file above it
            description = Config.model_fields[section].annotation.model_fields[key].description
            assert description, f"{section}.{key} has no description"
            assert description.split()[0] in shipped


def test_toml_round_trip_and_overrides(tmp_path):
    cfg = load_config(overrides=["train.learning_rate=1e-4", "generate.k=8", "train.loss_type=sigmoid,sft",
                                 "model.speaker_in_prompt=false", "train.loss_weights=1,0.5",
                                 "guard.tolerances.asr_wer=0.03"], workdir=str(tmp_path))
    assert (cfg.train.learning_rate, cfg.generate.k, cfg.train.loss_type) == (1e-4, 8, ["sigmoid", "sft"])
    assert cfg.train.loss_weights == [1.0, 0.5] and all(type(w) is float for w in cfg.train.loss_weights)
    assert load_config(overrides=["train.loss_weights=[2, 1]"]).train.loss_weights == [2.0, 1.0]
    assert cfg.model.speaker_in_prompt is False
    assert cfg.guard.tolerances["asr_wer"] == 0.03 and cfg.guard.tolerances["unit_edit_distance"] == 0.02
    assert Config.model_validate(tomllib.loads(cfg.to_toml())) == cfg


def test_workdir_config_is_read_back_and_overridden_per_command(tmp_path):
    save_config(load_config(overrides=["generate.k=6"], workdir=str(tmp_path)))
    assert load_config(workdir=str(tmp_path)).generate.k == 6
    assert load_config(overrides=["generate.k=5"], workdir=str(tmp_path)).generate.k == 5
    assert load_config(workdir=str(tmp_path)).store_url == f"sqlite:///{tmp_path / 'store.db'}"


def test_a_table_knob_written_as_a_list_is_refused_with_the_table_to_write(tmp_path):
    (tmp_path / "config.toml").write_text('[guard]\ntolerances = ["unit_edit_distance=0.03", "asr_wer=0.1"]\n')
    with pytest.raises(ConfigError, match=r"guard.tolerances = \['unit_edit_distance=0.03', 'asr_wer=0.1'\]: a table "
                                          r"of metric = number, e.g. guard.tolerances = \{dnsmos_ovrl = 0.05\}"):
        load_config(workdir=str(tmp_path))
    (tmp_path / "config.toml").write_text('[guard]\ntolerances = {unit_edit_distance = 0.03, asr_wer = 0.1}\n')
    assert load_config(workdir=str(tmp_path)).guard.tolerances["asr_wer"] == 0.1


@pytest.mark.parametrize("override, message", [
    ("generate.k=abc", "generate.k = 'abc': Input should be a valid integer"),
    ("generat.k=3", "unknown section [generat]"),
    ("generate.kk=3", "unknown key generate.kk; [generate] has k, prompts_per_round"),
    ("generate", "expected section.key=value"),
    ("train.loss_weights=1,x", "train.loss_weights.1 = 'x': Input should be a valid number"),
    ("score.metrics=[1, 2]", "score.metrics.0 = 1: Input should be a valid string"),
    ("train.loss_type=3", "train.loss_type = 3: Input should be a valid list"),
    ("generate.k=0", "generate.k = 0: Input should be greater than or equal to 1"),
    ("guard.tolerances.asr_wer=-1", "guard.tolerances: {'asr_wer': -1.0} : every entry is a metric name and a number"),
    ("evaluate.probe_metrics=asr,wer", "evaluate.probe_metrics: unknown metric 'wer'; [score] metrics can be asr, "),
])
def test_bad_knobs_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("{", r"\{")
                       .replace("}", r"\}").replace("(", r"\(").replace(")", r"\)")):
        check_names(load_config(overrides=[override]))  # what every command does before any work


def test_choices_are_checked_when_the_config_is_read():
    with pytest.raises(ConfigError, match=r"train.reference = 'bogus'; it can be 'previous', 'initial'"):
        load_config(overrides=["train.reference=bogus"])
    with pytest.raises(ConfigError, match="pairs.criterion = 'best'; it can be golden_vs_synthetic"):
        load_config(overrides=["pairs.criterion=best"])


def test_a_recipes_file_is_read_as_overrides(tmp_path):
    from speechalign.flows.ablation import campaign_name, read_recipes, recipe_overrides

    (tmp_path / "recipes.toml").write_text('[dpo]\n"train.loss_type" = ["sigmoid", "sft"]\n"train.beta" = 0.2\n'
                                           '["SFT golden"]\n"train.loss_type" = ["sft"]\n'
                                           '[tighter]\n"guard.tolerances" = {asr_wer = 0.01}\n')
    recipes = read_recipes(tmp_path / "recipes.toml")
    assert recipes["dpo"] == ['train.loss_type=["sigmoid", "sft"]', "train.beta=0.2"]
    cfg = load_config(overrides=recipe_overrides("demo", "SFT golden", recipes["SFT golden"], ["generate.k=2"]))
    assert (cfg.train.loss_type, cfg.generate.k, cfg.campaign.name) == (["sft"], 2, "demo-sft-golden")
    assert load_config(overrides=recipes["tighter"]).guard.tolerances["asr_wer"] == 0.01
    assert campaign_name("demo", "single:dnsmos_ovrl") == "demo-single-dnsmos-ovrl"
    (tmp_path / "bad.toml").write_text("dpo = 3\n")
    with pytest.raises(ConfigError, match=r"\[dpo\] must be a table of knobs"):
        read_recipes(tmp_path / "bad.toml")
