"""A one-round campaign on tiny real models, on SQLite and PostgreSQL, and a round that fails and
resumes from its last completed stage."""

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from mlflow.tracking import MlflowClient

from speechalign.flows.campaign import alignment_campaign
from speechalign.flows.round import alignment_round
from speechalign.models.codec_lm import METADATA_FILE, load_codec_lm
from speechalign.preference_store.schema import CeilingScore, Pair, Sample, Score
from speechalign.preference_store.store import open_store
from speechalign.report import campaign_report


def prefect_artifact(key: str) -> str:
    """The latest markdown of a Prefect artifact, read back from the (test) Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return sorted(found, key=lambda a: a.created)[-1].data


def progress_artifacts() -> dict[str, float]:
    """The newest progress artifacts on this test process's Prefect server (its tests run one at a time, so the newest
    are this test's; the server returns 200 at most): description -> percent done."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])),
                                      sort=ArtifactSort.CREATED_DESC, limit=200)
    return {a.description: a.data for a in sorted(found, key=lambda a: a.created)}


def counts(store, round_id):
    samples = store.samples(round_id)
    return {kind: sum(s.kind == kind for s in samples) for kind in ("golden", "candidate", "heldout")} | {
        "scores": store.count(Score), "pairs": store.count(Pair, round_id=round_id)}


def test_one_round_campaign(bootstrapped, capsys):
    cfg = bootstrapped
    [result] = alignment_campaign(str(cfg.workdir), rounds=1)
    store = open_store(cfg.store_url)
    campaign = store.campaign(cfg.campaign.name)
    base, first = store.rounds(campaign.id)
    assert (base.number, first.number, first.status) == (0, 1, "completed")
    # 24 utterances: 5 held out, then corpus.sft_fraction = 0.5 of the other 19 for the base model's SFT alone (10),
    # and the 9 left are the prompts rounds draw from
    splits = [p.split for p in store.prompts()]
    assert {s: splits.count(s) for s in set(splits)} == {"heldout": 5, "sft": 10, "train": 9}
    assert json.loads((cfg.layout.base_model / METADATA_FILE).read_text())["sft"]["utterances"] == 10
    prompts = {p.id: p for p in store.prompts()}
    assert {prompts[s.prompt_id].split for s in store.samples(first.id) if s.kind in ("golden", "candidate")} == \
        {"train"}
    c = counts(store, first.id)
    assert c["golden"] == 9 and c["candidate"] == 9 * 2 and c["heldout"] == 5 * 2
    assert c["pairs"] == sum(1 for p in store.pairs(first.id))
    assert 0 < c["pairs"] <= 9 * 2
    # round 0: 5 held-out prompts x 2 samples, 3 probe prompts x 2
    kinds = [s.kind for s in store.samples(base.id)]
    assert {k: kinds.count(k) for k in set(kinds)} == {"heldout": 10, "probe": 6}
    # held-out samples of rounds 0 and 1: UED, length ratio, log-likelihood, DNSMOS x3, speaker similarity, and ASR's
    # CER and WER = 9 values; their probe samples: UED, length ratio, log-likelihood, CER and WER = 5 (the default
    # evaluate.probe_metrics); round 1's golden and candidates under golden_vs_synthetic: the 2 values that read only
    # the units (UED, length ratio; no policy log-likelihood, no audio)
    assert store.count(Score) == 9 * (10 + 10) + 5 * (6 + 6) + 2 * (9 + 18)
    # the ceiling, scored at bootstrap and read by round 0: 5 recordings and 5 golden token sequences decoded, with
    # the 8 values that belong to a sample (policy log-likelihood belongs to a model)
    assert store.count(CeilingScore) == 8 * (5 + 5)
    assert len(list((cfg.layout.corpus / "ceiling" / "model").glob("*.wav"))) == 5
    assert all(p.criterion == "golden_vs_synthetic" and p.source == "auto" for p in store.pairs(first.id))
    for sample in store.samples(first.id) + store.samples(base.id):
        if sample.round_id == first.id and sample.kind in ("golden", "candidate"):  # nothing listens to them
            assert sample.audio_path is None
        else:  # every evaluated sample decoded to a 16 kHz WAV
            info = sf.info(sample.audio_path)
            assert Path(sample.audio_path).is_relative_to(cfg.workdir) and info.samplerate == 16000
            assert info.frames == len(sample.tokens) * 320

    client = MlflowClient(cfg.tracking_uri)
    [version] = client.search_model_versions(f"name='{cfg.registered_model}'")
    assert (str(version.version), version.tags["speechalign.round"], version.tags["parent_version"]) == \
        ("1", "1", "base")
    assert version.tags["speechalign.campaign"] == cfg.campaign.name and version.run_id == first.mlflow_run_id
    run = client.get_run(first.mlflow_run_id)
    assert run.data.tags["mlflow.parentRunId"] == campaign.mlflow_parent_run_id
    # the UI opens the experiment as model training (runs and models), not on the GenAI traces page
    assert client.get_experiment(campaign.mlflow_experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    assert run.info.status == "FINISHED"
    parent = client.get_run(campaign.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED"  # at rest between rounds, not left RUNNING
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "heldout/unit_edit_distance")] == [0, 1]
    logged = {"heldout/unit_edit_distance", "heldout/golden_nll", "dpo/rewards/accuracies", "dpo/logps/chosen"}
    assert logged <= run.data.metrics.keys()
    assert 0 < run.data.metrics["heldout/golden_nll"] < 20
    assert run.data.params["train.loss_type"] == str(cfg.train.loss_type)
    assert [a.path for a in client.list_artifacts(first.mlflow_run_id, "adapter")]
    listened = [a.path for a in client.list_artifacts(first.mlflow_run_id, "audio")]
    assert len(listened) == 3  # three held-out prompts: recording, golden tokens decoded, this round's sample
    files = [a.path.rsplit("/", 1)[1] for a in client.list_artifacts(first.mlflow_run_id, listened[0])]
    assert files == ["1_recording.wav", "2_golden_tokens.wav", "3_round_1.wav", "text.txt"]
    assert len(client.list_artifacts(campaign.mlflow_parent_run_id, "audio/round-0")) == 3
    assert result.version == "1" and store.checkpoint(first.id).mlflow_version == "1"

    # the guard and the gate decided, with their reasons, in the store and on the run, and the alias follows the gate
    # (which way they decide on given figures: tests/test_promotion.py and test_criteria_and_guard.py)
    decisions = store.decisions(first.id)
    assert decisions["guard"].verdict in ("ok", "flagged") and "dpo" in decisions["guard"].details
    gate = decisions["promotion"]
    assert (gate.verdict == "refused") == bool(gate.reasons)
    assert run.data.tags["speechalign.promotion"] == gate.verdict and "speechalign.guard.reasons" in run.data.tags
    aliases = client.get_registered_model(cfg.registered_model).aliases
    assert aliases == ({"champion": 1} if gate.verdict == "promoted" else {})
    assert store.checkpoint(first.id).promoted == (gate.verdict == "promoted")
    assert 0 < run.data.metrics["pairs/pair_yield"] <= 1 and "pairs/candidate_diversity" in run.data.metrics
    assert {"heldout/dnsmos_ovrl", "heldout/speaker_similarity", "heldout/asr_cer", "heldout/policy_loglik",
            "heldout/unit_kl", "probe/asr_wer", "change/heldout/asr_wer/vs_base", "change/heldout/asr_wer/vs_base_low",
            "change/heldout/asr_wer/vs_previous_high"} <= run.data.metrics.keys()
    assert [a.path for a in client.list_artifacts(first.mlflow_run_id, "distribution_gap/round-1")] == \
        ["distribution_gap/round-1/distribution_gap.png"]

    policy, base_lm = load_codec_lm(first.policy_out), load_codec_lm(campaign.base_model_path)
    enc = policy.tokenizer([policy.prompt("Bring the red box.", "en-us+m3")], return_tensors="pt",
                           add_special_tokens=False)
    with torch.no_grad():
        assert not torch.allclose(policy.model(**enc).logits, base_lm.model(**enc).logits)

    progress = progress_artifacts()
    assert progress.get("generate: 18 candidate sequences of round 1") == 100.0
    assert progress.get("train: optimizer steps done") == 100.0
    markdown = prefect_artifact(f"{cfg.campaign.name}-round-1")
    assert "round 1: completed" in markdown and "| train | completed |" in markdown and "| 1 | completed |" in markdown

    report = campaign_report(cfg)
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    low, high = report["rounds"][1]["ci"]["heldout/asr_wer"]["vs_base"]
    assert low <= report["rounds"][1]["change"]["heldout/asr_wer"]["vs_base"] <= high
    assert report["rounds"][1]["ci"]["heldout/asr_wer"]["vs_previous"] == [low, high]  # round 1's previous is 0
    assert report["ceiling"]["heldout/unit_edit_distance"] == 0.0  # the recordings' own golden tokens
    assert report["golden_tokens"]["heldout/length_ratio"] == 1.0 and 0 <= report["ceiling"]["heldout/asr_wer"]
    assert report["rounds"][1]["mlflow_version"] == "1" and report["rounds"][1]["pairs/pairs"] == c["pairs"]
    assert report["rounds"][1]["heldout/unit_edit_distance"] == pytest.approx(
        run.data.metrics["heldout/unit_edit_distance"])

    # `speechalign report` prints every round's row, the ceiling rows and the changes; --markdown the same table
    from speechalign.cli import main

    assert main(["report", "--workdir", str(cfg.workdir)]) == 0
    text = capsys.readouterr().out.splitlines()
    ued = f"{report['rounds'][1]['heldout/unit_edit_distance']:.4f}"
    assert [line.split()[0] for line in text[3:7]] == ["0", "1", "recording", "golden"]
    assert ued in text[4] and "change against round 0 (the base model)" in "\n".join(text)
    assert main(["report", "--workdir", str(cfg.workdir), "--markdown"]) == 0
    markdown = capsys.readouterr().out.splitlines()
    assert markdown[2].startswith("| round | status |") and markdown[5].startswith("| 1 | completed |")
    assert ued in markdown[5]


def test_a_failed_round_resumes_from_its_last_completed_stage(bootstrapped):
    cfg = bootstrapped
    with pytest.raises(Exception, match="no_such_layer"):  # PEFT finds no such module: the train stage fails
        alignment_round(str(cfg.workdir), overrides=["train.target_modules=no_such_layer"])
    store = open_store(cfg.store_url)
    campaign = store.campaign(cfg.campaign.name)
    failed = store.rounds(campaign.id)[-1]
    stages = store.stages(failed.id)
    assert failed.status == "failed" and "no_such_layer" in failed.error
    assert {k: v.status for k, v in stages.items()} == {
        "generate": "completed", "decode": "completed", "score": "completed", "pairs": "completed", "train": "failed"}
    before = counts(store, failed.id)
    markdown = prefect_artifact(f"{cfg.campaign.name}-round-1")
    assert "round 1: failed" in markdown and "no_such_layer" in markdown and "| train | failed |" in markdown

    result = alignment_round(str(cfg.workdir))
    assert result.round == 1  # the same round, finished, not a new one
    stages = store.stages(failed.id)
    assert store.round(failed.id).status == "completed"
    assert (stages["generate"].attempts, stages["decode"].attempts, stages["train"].attempts) == (1, 1, 2)
    after = counts(store, failed.id)
    kept = ("golden", "candidate", "pairs")
    assert {k: after[k] for k in kept} == {k: before[k] for k in kept}
    assert store.count(Sample, round_id=failed.id, kind="candidate") == 9 * 2
    client = MlflowClient(cfg.tracking_uri)
    assert len(client.search_model_versions(f"name='{cfg.registered_model}'")) == 1


def test_a_second_trigger_while_a_round_runs_is_refused(bootstrapped, capsys):
    from speechalign.cli import main
    from speechalign.flows.common import ensure_campaign
    from speechalign.preference_store.round_lock import CampaignRoundLock, RoundBusy

    cfg = bootstrapped
    store = open_store(cfg.store_url)
    campaign = ensure_campaign(cfg)
    with CampaignRoundLock(store, campaign.id, campaign.name):  # a round of this campaign is running
        with pytest.raises(RoundBusy, match="a round is already running"):
            alignment_round(str(cfg.workdir))
        assert main(["round", "--workdir", str(cfg.workdir)]) == 3  # the CLI says so and exits 3
        assert "speechalign: busy: campaign" in capsys.readouterr().err
    assert store.rounds(campaign.id) == []  # the refused trigger started nothing


def test_a_campaign_the_guard_stopped_refuses_new_rounds(bootstrapped, capsys):
    from speechalign.cli import main
    from speechalign.errors import CampaignStopped
    from speechalign.flows.common import ensure_campaign

    cfg = bootstrapped
    store = open_store(cfg.store_url)
    campaign = ensure_campaign(cfg)
    for number in (0, 1):  # a campaign whose round 1 the guard flagged
        rnd = store.open_round(campaign.id, number, campaign.base_model_path)
        store.finish_round(rnd.id, "completed", policy_out=campaign.base_model_path)
    store.add_decision(rnd.id, "guard", "flagged", ["DPO collapse: reward accuracy 0.990"], {})
    with pytest.raises(CampaignStopped, match="stopped campaign .* after round 1: DPO collapse"):
        alignment_round(str(cfg.workdir), overrides=["guard.action=stop"])
    assert main(["round", "--workdir", str(cfg.workdir), "--set", "guard.action=stop"]) == 4
    assert "--set guard.action=warn" in capsys.readouterr().err
    assert [r.number for r in store.rounds(campaign.id)] == [0, 1]  # nothing started


def store_base(cfg) -> str:
    return open_store(cfg.store_url).campaign(cfg.campaign.name).base_model_path


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_old_merged_policies_are_pruned_and_merged_again_on_demand(bootstrapped, tmp_path):
    import shutil

    from speechalign.cli import main

    cfg = bootstrapped
    overrides = ['guard.champion_alias=""']  # no champion: only the last round's merged policy is kept
    alignment_round(str(cfg.workdir), overrides=overrides)
    shutil.copytree(cfg.layout.policy(1), tmp_path / "round-1-policy")
    alignment_round(str(cfg.workdir), overrides=overrides)
    assert not cfg.layout.policy(1).exists() and cfg.layout.policy(2).is_dir()  # round 1's merged policy is gone
    assert cfg.layout.adapter(1).is_dir()  # its adapter stays
    assert main(["policy", "--workdir", str(cfg.workdir), "--round", "1", "--out", str(tmp_path / "again")]) == 0
    made, again = load_codec_lm(tmp_path / "round-1-policy"), load_codec_lm(tmp_path / "again")
    for (name, a), (_, b) in zip(made.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name  # base + round 1's adapter: the policy round 1 made
    # both say what they are made of (a vLLM server can run them as the base model and that adapter)
    assert again.metadata["lineage"] == made.metadata["lineage"] == {
        "base": store_base(cfg), "adapters": [str(cfg.layout.adapter(1))]}
    assert main(["policy", "--workdir", str(cfg.workdir), "--round", "5", "--out", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_round_that_keeps_no_pairs_fails_naming_the_knobs_and_goes_on_once_they_change(bootstrapped):
    cfg = bootstrapped
    unreachable = ["pairs.criterion=single:unit_edit_distance", "pairs.margins={unit_edit_distance = 100.0}"]
    with pytest.raises(RuntimeError, match="criterion single:unit_edit_distance kept no pairs of 9 candidate pairs "
                                           r"\(candidate diversity .*\); raise generate.k"):
        alignment_round(str(cfg.workdir), overrides=unreachable)
    store = open_store(cfg.store_url)
    rnd = store.rounds(store.campaign(cfg.campaign.name).id)[-1]
    assert rnd.status == "failed" and store.count(Pair, round_id=rnd.id) == 0
    assert {k: v.status for k, v in store.stages(rnd.id).items()} == {
        "generate": "completed", "decode": "completed", "score": "completed", "pairs": "failed"}
    assert alignment_round(str(cfg.workdir)).round == 1  # the default criterion finds pairs: the same round finishes
    assert store.round(rnd.id).status == "completed" and store.count(Pair, round_id=rnd.id) > 0


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_base_model_as_dpo_reference(bootstrapped):
    """train.reference = "initial": DPO's implicit reward measures the policy against the campaign's base model, not
    against the round's input policy. At the first step the LoRA adapter is zero, so the policy is its input policy:
    against the input policy (round 1's, and round 2's default) every reward is 0; round 2's input policy is round
    1's, which differs from the base model, so against the base model the rewards are not 0."""
    cfg = bootstrapped
    alignment_round(str(cfg.workdir))
    alignment_round(str(cfg.workdir), overrides=["train.reference=initial"])
    store = open_store(cfg.store_url)
    first, second = store.rounds(store.campaign(cfg.campaign.name).id)[1:]
    trained = [store.stages(r.id)["train"].result for r in (first, second)]
    assert [t["reference"] for t in trained] == ["previous", "initial"]
    assert trained[0]["history"][0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert abs(trained[1]["history"][0]["rewards/chosen"]) > 1e-3
