"""The command line: migrations, and failing fast with a message that says what to fix."""

import json

from speechalign.cli import main
from speechalign.preference_store import migrate


def test_db_upgrade(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'db' / 'store.db'}"
    assert main(["db", "upgrade", "--db", url]) == 0
    assert migrate.current_revision(url) == migrate.head_revision(url)
    assert f"revision {migrate.head_revision(url)}" in capsys.readouterr().out


def test_unreachable_database_fails_before_any_work(tmp_path, capsys):
    code = main(["round", "--workdir", str(tmp_path), "--set", 'store.url="postgresql://nobody@127.0.0.1:9/none"'])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the preference store at postgresql://nobody@127.0.0.1:9/none" in err
    assert "Fix [store] url" in err
    assert not (tmp_path / "campaigns").exists()


def test_unreachable_mlflow_fails_before_any_work(tmp_path, capsys):
    code = main(["campaign", "--workdir", str(tmp_path), "--rounds", "1", "--set",
                 'mlflow.tracking_uri="http://127.0.0.1:9"'])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the MLflow tracking server at http://127.0.0.1:9" in err


def test_a_round_before_bootstrap_says_what_to_run(tmp_path, capsys):
    assert main(["round", "--workdir", str(tmp_path)]) == 2
    assert "run `speechalign bootstrap" in capsys.readouterr().err


def test_missing_manifest_is_named(tmp_path, capsys):
    assert main(["bootstrap", "--workdir", str(tmp_path), "--manifest", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl does not exist" in capsys.readouterr().err


def test_report_json_of_an_empty_workdir(tmp_path, capsys):
    assert main(["report", "--workdir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rounds"] == []


def test_a_metric_without_its_weights_fails_before_any_work(tmp_path, capsys):
    code = main(["round", "--workdir", str(tmp_path), "--set", "score.heldout_metrics=asr,nisqa"])
    err = capsys.readouterr().err
    assert code == 2 and "metric nisqa: nisqa needs its weights" in err and "[score] nisqa_weights" in err
    code = main(["round", "--workdir", str(tmp_path), "--set", f'score.asr_model="{tmp_path / "whisper-small"}"'])
    assert code == 2 and "[score] asr_model" in capsys.readouterr().err
    assert not (tmp_path / "campaigns").exists()
