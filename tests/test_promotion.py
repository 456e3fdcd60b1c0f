"""The promotion gate on hand-made held-out figures: a round that must be promoted gets the MLflow alias and the
store's decision, one that must be refused leaves the champion where it was, and pruning keeps the champion's
merged policy beside the last round's."""

import pytest
from mlflow.tracking import MlflowClient

from speechalign.flows.common import ensure_campaign
from speechalign.preference_store.store import open_store
from speechalign.runtime.context import open_round
from speechalign.runtime.policies import prune_policies
from speechalign.runtime.results import Heldout, Registered, Verdict, dump
from speechalign.tasks.guard import promote

PROMPTS = (1, 2, 3, 4)
BASE = {"asr_wer": 1.00, "unit_edit_distance": 0.70, "dnsmos_ovrl": 2.40}


def heldout(policy: str, **moved: float) -> Heldout:
    """Held-out figures of a policy whose every prompt moved by the same amount from the base model's. Every bootstrap
    resample of prompts then has that change: its interval is [change, change], written here by hand."""
    metrics = {m: v + moved.get(m, 0.0) for m, v in BASE.items()}
    per_prompt = {m: {p: v for p in PROMPTS} for m, v in metrics.items()}
    change = {m: [moved.get(m, 0.0)] * 3 for m in BASE}
    return Heldout(policy=policy, prompts=len(PROMPTS), samples=2 * len(PROMPTS), mode="sampled", metrics=metrics,
                   per_prompt=per_prompt, changes={"vs_base": change, "vs_previous": change, "vs_champion": change})


def record(store, round_id: int, result) -> None:
    """A stage's result as the store holds it once the stage completed."""
    store.stage_started(round_id, result.stage)
    store.stage_completed(round_id, result.stage, dump(result), 1.0)


def finished_round(cfg, store, campaign, number: int, result: Heldout, registered: Registered | None = None):
    """Round `number` as the store holds it once evaluated (and registered): its stage results recorded, a merged
    policy on disk."""
    policy = cfg.layout.policy(number)
    policy.mkdir(parents=True, exist_ok=True)
    (policy / "model.safetensors").write_bytes(b"weights")
    rnd = store.open_round(campaign.id, number, str(cfg.layout.policy(number - 1)) if number > 1 else "base")
    record(store, rnd.id, result)
    if registered:
        record(store, rnd.id, registered)
        store.add_checkpoint({"round_id": rnd.id, "path": str(policy), "mlflow_model_name": registered.model,
                              "mlflow_version": registered.version, "metrics": result.metrics, "promoted": False,
                              "parent_version": None})
    return rnd


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_gate_promotes_what_is_better_refuses_what_is_worse_and_pruning_keeps_the_champion(bootstrapped):
    cfg = bootstrapped
    store = open_store(cfg.store_url)
    campaign = ensure_campaign(cfg)
    client = MlflowClient(cfg.tracking_uri)
    client.create_registered_model(cfg.registered_model)
    base = store.open_round(campaign.id, 0, campaign.base_model_path)
    record(store, base.id, heldout(campaign.base_model_path))
    store.finish_round(base.id, "completed", policy_out=campaign.base_model_path)

    def run_round(number: int, result: Heldout) -> tuple[str, tuple[str, ...]]:
        version = client.create_model_version(cfg.registered_model, str(cfg.layout.policy(number))).version
        registered = Registered(run_id="", model=cfg.registered_model, version=str(version))
        rnd = finished_round(cfg, store, campaign, number, result, registered)
        ctx = open_round(cfg, campaign, number, rnd.policy_in)
        decision = promote.fn(ctx, registered, result, Verdict(flagged=False))
        store.finish_round(rnd.id, "completed", policy_out=str(cfg.layout.policy(number)))
        return decision.verdict, decision.reasons

    # round 1: WER and UED better on every prompt, OVRL unchanged: promoted against the base model
    verdict, reasons = run_round(1, heldout("p1", asr_wer=-0.10, unit_edit_distance=-0.05))
    assert (verdict, reasons) == ("promoted", ())
    assert client.get_registered_model(cfg.registered_model).aliases == {"champion": 1}
    rounds = store.rounds(campaign.id)
    assert store.decisions(rounds[1].id)["promotion"].verdict == "promoted" and store.checkpoint(rounds[1].id).promoted
    # round 2: better than the base model, but its WER mean is worse than the champion's (round 1): refused
    verdict, reasons = run_round(2, heldout("p2", asr_wer=-0.09, unit_edit_distance=-0.06))
    assert verdict == "refused" and reasons == (
        "held-out asr_wer 0.9100 is worse than the champion round 1, version 1's 0.9000 (guard.gate_metrics: the "
        "champion is replaced only by a round at least as good on these)",)
    assert client.get_registered_model(cfg.registered_model).aliases == {"champion": 1}
    # round 3: OVRL worse beyond its tolerance (0.1), interval and all, though WER and UED are better: refused
    verdict, reasons = run_round(3, heldout("p3", asr_wer=-0.20, unit_edit_distance=-0.10, dnsmos_ovrl=-0.30))
    assert verdict == "refused" and reasons[0].startswith("held-out dnsmos_ovrl 2.1000 vs 2.4000 (champion round 1")
    rounds = store.rounds(campaign.id)
    assert [store.decisions(r.id)["promotion"].verdict for r in rounds[1:]] == ["promoted", "refused", "refused"]
    assert [store.checkpoint(r.id).promoted for r in rounds[1:]] == [True, False, False]
    assert client.get_registered_model(cfg.registered_model).aliases == {"champion": 1}

    deleted = prune_policies(cfg, store, campaign)  # keep the last round's merged policy and the champion's
    assert deleted == [str(cfg.layout.policy(2))]
    assert cfg.layout.policy(1).is_dir() and cfg.layout.policy(3).is_dir() and not cfg.layout.policy(2).exists()
