"""The online round: rewards from rollouts decoded once and scored by the metric plug-ins, a GRPO round that records
every rollout once, also when it is killed inside training, and the pair criteria built on own samples."""

import signal
from types import SimpleNamespace

import pytest

from speechalign.config import load_config
from speechalign.flows.common import ensure_campaign
from speechalign.flows.round import alignment_round
from speechalign.preference_store.store import open_store
from speechalign.rewards import Reward
from speechalign.runtime.context import open_round
from speechalign.runtime.faults import FAULT_ENV
from tests.conftest import light_scoring
from tests.forked_cli import run_cli

ONLINE = ["train.method=grpo", "online.num_generations=2", "online.prompts_per_step=2", "online.save_steps=1",
          "generate.prompts_per_round=4", "generate.max_new_tokens=120", "train.learning_rate=0.001",
          "online.beta=0.04",  # the default KL term: the reference is the policy with its adapter disabled
          "reward.weights={asr_cer = 1.0, unit_edit_distance = 1.0}",  # a reward that listens: rollouts decoded
          "reward.min_length_ratio=0.0"]  # the tiny model's rollouts are short: let the ones that end be heard


def test_the_reward_is_bounded_weighted_and_zero_for_a_degenerate_length():
    weights = "reward.weights={asr_cer = 2.0, speaker_similarity = 1.0, unit_edit_distance = 0.0}"  # 0: left out
    reward = Reward.from_config(load_config(overrides=[weights]).reward)
    # CER 0.25 -> 0.75 (bounds [1, 0]); speaker similarity 0.9 -> 0.8 (bounds [0.5, 1]); weighted 2:1
    assert reward({"asr_cer": 0.25, "speaker_similarity": 0.9}, 40, 50, True) == pytest.approx((2 * 0.75 + 0.8) / 3)
    assert reward({"asr_cer": 1.7, "speaker_similarity": 0.2}, 40, 50, True) == 0.0  # beyond the worst ends: 0
    assert reward({"asr_cer": 0.0, "speaker_similarity": 1.0}, 40, 50, True) == 1.0
    assert reward({"asr_cer": 0.0, "speaker_similarity": None}, 40, 50, True) == pytest.approx(2 / 3)  # failed: 0
    assert reward({"asr_cer": 0.0, "speaker_similarity": 1.0}, 40, 50, False) == 0.0  # hit max_new_tokens
    assert reward({"asr_cer": 0.0, "speaker_similarity": 1.0}, 24, 50, True) == 0.0  # under half the golden length


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_batch_of_rollouts_is_decoded_once_and_an_empty_or_endless_one_gets_the_worst_reward(bootstrapped):
    from speechalign.models.codec_lm import load_codec_lm
    from speechalign.rewards import Reward
    from speechalign.tasks.train_online import RolloutScorer

    cfg = load_config(workdir=str(bootstrapped.workdir),
                      overrides=["reward.weights={asr_cer = 1.0, unit_edit_distance = 1.0, speaker_similarity = 1.0}"])
    store = open_store(cfg.store_url)
    campaign = ensure_campaign(cfg)
    ctx = open_round(cfg, campaign, 1, campaign.base_model_path)
    lm = load_codec_lm(campaign.base_model_path)
    prompts = store.prompts("train")[:2]
    scorer = RolloutScorer(cfg, ctx, lm, {p.id: p for p in store.prompts()}, Reward.from_config(cfg.reward), 4)
    decoded = []
    synthesize_each = scorer.synth.synthesize_each

    def counted(units, speakers, batch_size):
        decoded.extend(map(tuple, units))
        return synthesize_each(units, speakers, batch_size)

    scorer.synth.synthesize_each = counted  # the real decoder, its calls counted
    ids = lambda units, end=True: [*(lm.unit_ids()[u] for u in units), *([lm.eosp_id] if end else [])]  # noqa: E731
    golden = [p.golden_tokens[0] for p in prompts]
    completion_ids = [ids(golden[0]),  # the recording's own units, spoken to the end
                      ids([]),  # ends at once: nothing to hear
                      ids(golden[1][:-3], end=False),  # stopped by max_new_tokens, no end token
                      ids(golden[1])]
    prompt_ids = [prompts[0].id, prompts[0].id, prompts[1].id, prompts[1].id]
    state = SimpleNamespace(global_step=0)
    rewards = {name: scorer.component(name)(prompts=[], completions=[], completion_ids=completion_ids,
                                            prompt_id=prompt_ids, trainer_state=state)
               for name in ("asr_cer", "unit_edit_distance", "speaker_similarity")}
    assert sorted(decoded) == sorted([tuple(golden[0]), tuple(golden[1])])  # each heard rollout decoded once
    for name, values in rewards.items():
        assert values[1] == 0.0 and values[2] == 0.0, name  # empty and endless: the worst, whatever they sound like
    assert rewards["unit_edit_distance"][0] == rewards["unit_edit_distance"][3] == 1.0  # golden units: UED 0
    rollouts = {s.k: s for s in store.samples(ctx.round.id, "rollout")}
    assert sorted(rollouts) == [0, 1, 2, 3] and [rollouts[k].finished for k in range(4)] == [True, True, False, True]
    scores = store.scores(ctx.round.id, "rollout")
    assert scores[rollouts[1].id] == {"reward": 0.0}  # neither decoded nor scored
    assert scores[rollouts[0].id]["reward"] == pytest.approx(sum(rewards[n][0] for n in rewards) / 3)
    assert 0 <= scores[rollouts[0].id]["asr_cer"] and "speaker_similarity" in scores[rollouts[3].id]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_an_online_round_killed_inside_training_resumes_and_records_every_rollout_once(bootstrapped):
    from prefect.settings import PREFECT_API_URL

    cfg = light_scoring(bootstrapped, *ONLINE)  # written to the work directory: the killed command reads it too
    log = cfg.workdir / "killed-round.log"
    code = run_cli(["round", "--workdir", str(cfg.workdir)],
                   {FAULT_ENV: "train:mid", "PREFECT_API_URL": PREFECT_API_URL.value()}, log)
    assert code == -signal.SIGKILL, log.read_text()[-6000:]
    store = open_store(cfg.store_url)
    campaign = store.campaign(cfg.campaign.name)
    killed = store.rounds(campaign.id)[-1]
    assert killed.number == 1 and store.stages(killed.id)["train"].status == "running"
    assert store.count_samples(killed.id, "rollout") == 4  # step 1's rollouts, recorded before the kill

    result = alignment_round(str(cfg.workdir))
    assert result.round == 1 and result.version == "1"
    stages = store.stages(killed.id)
    assert stages["train"].attempts == 2 and "generate" not in stages and "pairs" not in stages
    trained = stages["train"].result
    assert trained["method"] == "grpo" and trained["steps"] == 2
    rollouts = store.samples(killed.id, "rollout")
    assert sorted(s.k for s in rollouts) == list(range(8))  # 2 steps x 2 prompts x 2 rollouts, each once
    assert {(s.sampling["step"], s.sampling["group"]) for s in rollouts} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    scores = store.scores(killed.id, "rollout")
    assert all(0.0 <= scores[s.id]["reward"] <= 1.0 for s in rollouts)
    assert {"reward", "reward_std", "frac_reward_zero_std"} <= trained["final"].keys()
    assert "rewards/asr_cer/mean" in trained["history"][0] and "online/reward_s" in trained["final"]
    assert not (cfg.layout.round_dir(1) / "grpo").exists()  # the checkpoints went with the round's policy saved

    from mlflow.tracking import MlflowClient

    client, run_id = MlflowClient(cfg.tracking_uri), store.round(killed.id).mlflow_run_id
    assert {"grpo/reward", "grpo/rewards/unit_edit_distance/mean", "heldout/unit_edit_distance"} <= \
        client.get_run(run_id).data.metrics.keys()
    assert [a.path for a in client.list_artifacts(run_id, "rollouts")]  # the kept rollouts, to listen to

    from speechalign.report import campaign_report, format_table

    lines = format_table(campaign_report(cfg)).splitlines()  # GRPO's columns, not DPO's empty ones
    header, first = lines[1].split(), lines[4].split()
    assert header[:5] == ["round", "status", "reward", "KL", "flat"] and "acc" not in header
    assert first[:2] == ["1", "completed"] and float(first[2]) == pytest.approx(trained["final"]["reward"], abs=5e-4)


def test_pareto_pairs_never_reject_a_sample_that_wins_on_a_metric():
    from speechalign.criteria import criterion_function
    from speechalign.preference_store.schema import Sample

    cfg = load_config(None, ["pairs.criterion=pareto", "pairs.metrics=asr_wer,speaker_similarity",
                             "score.metrics=unit_edit_distance,asr,speaker_similarity"])
    samples = [Sample(id=i, round_id=1, prompt_id=1, kind="candidate", k=i, tokens=[i], finished=True)
               for i in (1, 2, 3, 4)]
    scores = {1: {"asr_wer": 0.10, "speaker_similarity": 0.70},  # first front
              2: {"asr_wer": 0.30, "speaker_similarity": 0.95},  # first front
              3: {"asr_wer": 0.20, "speaker_similarity": 0.60},  # beaten by 1 only: second front
              4: {"asr_wer": 0.50, "speaker_similarity": 0.80}}  # beaten by 2 only: second front, the last
    pairs = [(c.id, r.id) for c, r, _ in criterion_function(cfg)(samples, scores, cfg).pairs]
    # 2 against 3 would reject a sample with the better WER (0.20 < 0.30), 1 against 4 one with the better speaker
    # similarity: only the pairs whose chosen side dominates
    assert sorted(pairs) == [(1, 3), (2, 4)]


def test_best_of_k_prefers_the_candidate_with_the_highest_reward():
    from speechalign.criteria import criterion_function
    from speechalign.preference_store.schema import Sample

    cfg = load_config(None, ["pairs.criterion=best_of_k", "reward.weights={asr_cer = 1.0, unit_edit_distance = 0.0}",
                             "score.metrics=unit_edit_distance,asr"])
    golden = Sample(id=9, round_id=1, prompt_id=1, kind="golden", k=0, tokens=[1] * 10, finished=True)
    cands = [Sample(id=i, round_id=1, prompt_id=1, kind="candidate", k=i, tokens=[i] * 10, finished=i != 3)
             for i in (1, 2, 3)]
    scores = {1: {"asr_cer": 0.6, "asr_wer": 0.9}, 2: {"asr_cer": 0.2, "asr_wer": 0.4},
              3: {"asr_cer": 0.0, "asr_wer": 0.0}}  # the best CER, but it never ended: reward 0
    [(chosen, rejected, margins)] = criterion_function(cfg)([golden, *cands], scores, cfg).pairs
    assert (chosen.id, rejected.id) == (2, 3) and margins["reward"] == pytest.approx(0.8)
