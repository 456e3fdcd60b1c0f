"""SIGKILL a round at each stage (SPEECHALIGN_FAULT), run it again, and check exactly-once: the
round completes, nothing written before the kill is lost or written twice, completed stages do not
run again, and MLflow has one run and one model version for the round."""

import os
import signal

import pytest
from mlflow.tracking import MlflowClient

from speechalign.config import load_config
from speechalign.flows.round import alignment_round, baseline
from speechalign.preference_store.schema import Score
from speechalign.preference_store.store import open_store
from speechalign.runtime.faults import FAULT_ENV
from tests.conftest import built_once, copy_bootstrap, light_scoring
from tests.forked_cli import run_cli

STAGES = ["generate", "decode", "score", "pairs", "train", "generate_heldout", "decode_heldout", "score_heldout",
          "evaluate", "guard", "register", "promote"]
ALL = 'score.candidates="all"'  # every sample decoded and scored: the decode and score stages have work
# the killed round: 8 of the 9 train prompts, K=2, in generation batches of 8 (so "mid" falls between batches)
ROUND = ["generate.prompts_per_round=8", "generate.batch_size=8"]
FAULTS = ["generate:mid", "generate:end", "decode:mid", "score:end", "pairs:end", "train:mid", "train:end",
          "generate_heldout:mid", "decode_heldout:mid", "evaluate:end", "register:mid", "register:end", "promote:end"]


@pytest.fixture(scope="session")
def baselined_template(tmp_path_factory, bootstrap_template, prefect_server):
    """The bootstrap template with round 0 (the baseline) done, once for the session (`built_once`): the kill hits
    round 1 (round 0 has evaluate and register too), and no test runs round 0 again."""
    def build(folder):
        cfg = light_scoring(copy_bootstrap(bootstrap_template, folder / "work", f"sqlite:///{folder / 'store.db'}"),
                            ALL)
        baseline(str(cfg.workdir))

    return load_config(workdir=str(built_once(tmp_path_factory, "baselined", build) / "work"))


@pytest.fixture
def bootstrapped(tmp_path, store_url, baselined_template):
    """A copy of the baselined template of one's own, on the given store."""
    return light_scoring(copy_bootstrap(baselined_template, tmp_path / "work", store_url), ALL, *ROUND)


def kill_round_at(cfg, fault: str) -> None:
    """`speechalign round` in a process of its own (forked from a warm one), which SIGKILLs itself at `fault`."""
    from prefect.settings import PREFECT_API_URL

    log = cfg.workdir / "killed-round.log"
    env = {FAULT_ENV: fault, "PREFECT_API_URL": PREFECT_API_URL.value()}
    code = run_cli(["round", "--workdir", str(cfg.workdir)], env, log)
    assert code == -signal.SIGKILL, log.read_text()[-6000:]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("fault", FAULTS)
def test_a_round_killed_at_each_stage_resumes_exactly_once(bootstrapped, fault):
    cfg = bootstrapped
    stage, point = fault.split(":")
    kill_round_at(cfg, fault)

    store = open_store(cfg.store_url)
    campaign = store.campaign(cfg.campaign.name)
    killed = store.rounds(campaign.id)[-1]
    assert (killed.number, killed.status) == (1, "running")  # nobody got to record anything
    before = store.stages(killed.id)
    assert before[stage].status == "running"
    assert all(before[s].status == "completed" for s in STAGES[:STAGES.index(stage)])
    written = {(s.prompt_id, s.kind, s.k): (s.id, s.tokens) for s in store.samples(killed.id)}
    if fault == "generate:mid":
        assert 0 < sum(k[1] == "candidate" for k in written) < 8 * 2  # some batches were written
    decoded = {s.id: s.audio_path for s in store.samples(killed.id) if s.audio_path}
    if fault == "decode:mid":
        assert 0 < len(decoded) < 8 * 3  # some WAVs were written and recorded
    if fault == "generate_heldout:mid":  # 5 held-out prompts x 2 samples, in batches of 8: the first batch written
        assert sum(k[1] == "heldout" for k in written) == 8

    result = alignment_round(str(cfg.workdir))  # the next trigger: takes over the dead run's lock
    assert result.round == 1 and result.version == "1"
    rnd = store.round(killed.id)
    assert rnd.status == "completed" and store.rounds(campaign.id)[-1].number == 1
    stages = store.stages(killed.id)
    assert {s: st.status for s, st in stages.items()} == dict.fromkeys(STAGES, "completed")
    assert {s: stages[s].attempts for s in STAGES} == {s: 2 if s == stage else 1 for s in STAGES}

    samples = store.samples(killed.id)
    kinds = [s.kind for s in samples]
    assert (kinds.count("golden"), kinds.count("candidate"), kinds.count("heldout")) == (8, 16, 10)
    after = {(s.prompt_id, s.kind, s.k): (s.id, s.tokens) for s in samples}
    assert all(after[key] == value for key, value in written.items())  # nothing written before was lost
    assert all(s.audio_path and os.path.isfile(s.audio_path) for s in samples)  # every sample has its WAV
    assert all(s.audio_path == decoded[s.id] for s in samples if s.id in decoded)  # decoded once, kept
    # light scoring: every sample gets UED, length ratio and DNSMOS x3 (5 values), a probe sample only UED and length
    # ratio (the others of evaluate.probe_metrics are not scoring here)
    evaluated = store.samples(store.rounds(campaign.id)[0].id) + samples
    probes = sum(s.kind == "probe" for s in evaluated)
    assert probes == 2 * 3 * 2 and store.count(Score) == 5 * (len(evaluated) - probes) + 2 * probes
    pairs = store.pairs(killed.id)
    assert len(pairs) == len({(p.chosen_sample_id, p.rejected_sample_id) for p in pairs}) > 0

    client = MlflowClient(cfg.tracking_uri)
    versions = client.search_model_versions(f"name='{cfg.registered_model}'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].run_id == rnd.mlflow_run_id
    runs = client.search_runs([campaign.mlflow_experiment_id], filter_string="tags.`speechalign.round` = '1'")
    assert len(runs) == 1
