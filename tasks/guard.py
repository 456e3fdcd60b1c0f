"""The collapse guard and the promotion gate.

Guard (stage `guard`, after evaluate). GenSR-Pref saw a fixed ground-truth winner collapse the model:
DPO reward accuracy saturates, reward margins inflate, and the chosen side's likelihood falls while
quality drops. A round is flagged when, at the end of its DPO training,
  - rewards/accuracies >= guard.accuracy_limit, and rewards/margins >= guard.margin_limit, and the
    chosen side falls: rewards/chosen < 0 (the policy finds the chosen sequences less likely than its
    reference did) or logps/chosen below the previous round's;
  - or a held-out metric got worse than the previous round's by more than its tolerance.
guard.action decides what a flag does: warn (log it), stop (the campaign stops after this round and
refuses new rounds until the action is changed), refuse_promotion (the round is never champion).

Gate (stage `promote`, after register). The round's model version gets the MLflow alias
guard.champion_alias only if no held-out metric is worse than the current champion's (the base model
until a round is promoted) by more than its tolerance. Both decisions, with their reasons and figures,
go to the store (round_decisions) and onto the round's MLflow run as tags.
"""

from __future__ import annotations

from speechalign.config import Config, named_numbers
from speechalign.models.metrics import value_directions
from speechalign.tasks.stage import log, open_store
from speechalign.tracking import round_run

EXTRA_HELDOUT = {"golden_nll": False, "finished_rate": True}  # held-out figures evaluate adds to the metrics'


def heldout_directions(cfg: Config) -> dict[str, bool]:
    """Held-out figures that have a better direction (reported-only ones like length_ratio are left out)."""
    found = {**value_directions(cfg.score.metrics + cfg.score.heldout_metrics), **EXTRA_HELDOUT}
    return {m: d for m, d in found.items() if d is not None}


def regressions(cfg: Config, current: dict, reference: dict, against: str) -> list[str]:
    """One sentence per held-out metric that is worse than `reference` by more than its tolerance."""
    tolerances = named_numbers(cfg.guard.tolerances, "guard.tolerances")
    reasons = []
    for metric, higher in heldout_directions(cfg).items():
        now, ref = current.get(f"heldout/{metric}"), reference.get(f"heldout/{metric}")
        if now is None or ref is None:
            continue
        worse = (ref - now) if higher else (now - ref)
        tolerance = tolerances.get(metric, cfg.guard.default_tolerance * abs(ref))
        if worse > tolerance:
            reasons.append(f"held-out {metric} {now:.4f} vs {ref:.4f} ({against}): worse by {worse:.4f}, "
                           f"tolerance {tolerance:.4f}")
    return reasons


def collapse_signals(cfg: Config, final: dict, previous: dict | None = None) -> list[str]:
    """The DPO curve's end shows collapse: saturated accuracy, inflated margin and a falling chosen side, all
    at once. The chosen side falls when its reward is below 0 (less likely than under the reference) or its
    log-probability is below the previous round's (with reference = previous, each round's reference moves)."""
    acc, margin, chosen = (final.get(k) for k in ("rewards/accuracies", "rewards/margins", "rewards/chosen"))
    if acc is None or margin is None or chosen is None:
        return []
    falling = []
    if chosen < 0:
        falling.append(f"the chosen side's reward {chosen:.3f} < 0")
    logp, before = final.get("logps/chosen"), (previous or {}).get("logps/chosen")
    if logp is not None and before is not None and logp < before:
        falling.append(f"chosen log-probability {logp:.1f} < {before:.1f} the round before")
    if acc >= cfg.guard.accuracy_limit and margin >= cfg.guard.margin_limit and falling:
        return [f"DPO collapse: reward accuracy {acc:.3f} >= {cfg.guard.accuracy_limit}, reward margin {margin:.3f} >= "
                f"{cfg.guard.margin_limit}, and {' and '.join(falling)}"]
    return []


def guard_round(cfg: Config, round_id: int) -> dict:
    store = open_store(cfg)
    rnd = store.round(round_id)
    stages = store.stages(round_id)
    final, heldout = stages["train"].result["final"], stages["evaluate"].result
    previous = store.round_number(rnd.campaign_id, rnd.number - 1)
    earlier = store.stages(previous.id) if previous else {}
    before = earlier["evaluate"].result if "evaluate" in earlier else {}
    collapse = collapse_signals(cfg, final, earlier["train"].result["final"] if "train" in earlier else None)
    regressed = regressions(cfg, heldout, before, f"round {rnd.number - 1}")
    flagged = bool(collapse or regressed)
    details = {"dpo": {k: final.get(k) for k in ("rewards/accuracies", "rewards/margins", "rewards/chosen",
                                                 "logps/chosen")},
               "heldout": {k: v for k, v in heldout.items() if k.startswith("heldout/")},
               "previous_heldout": {k: v for k, v in before.items() if k.startswith("heldout/")},
               "action": cfg.guard.action}
    store.add_decision(round_id, "guard", "flagged" if flagged else "ok", collapse + regressed, details)
    if flagged:
        log.warning("collapse guard flagged round %d (action: %s): %s", rnd.number, cfg.guard.action,
                    "; ".join(collapse + regressed))
    return {"flagged": flagged, "collapse": bool(collapse), "reasons": collapse + regressed, "action": cfg.guard.action}


def stopped_by_guard(cfg: Config, campaign_id: int) -> str | None:
    """Why the campaign may not run another round (its guard stopped it), or None."""
    store = open_store(cfg)
    if cfg.guard.action != "stop":
        return None
    for rnd in reversed(store.rounds(campaign_id)):
        if rnd.status == "completed" and rnd.number > 0:
            decision = store.decisions(rnd.id).get("guard")
            if decision and decision.verdict == "flagged":
                return (f"the collapse guard stopped campaign {cfg.campaign.name} after round {rnd.number}: "
                        f"{'; '.join(decision.reasons)}. Look at the round in MLflow; to go on anyway, run with "
                        "--set guard.action=warn, or start a new campaign with a lower train.learning_rate or "
                        "the unanimous criterion")
            return None
    return None


def promote_round(cfg: Config, round_id: int) -> dict:
    store = open_store(cfg)
    rnd = store.round(round_id)
    campaign = store.campaign(cfg.campaign.name)
    checkpoint = store.checkpoint(round_id)
    stages = store.stages(round_id)
    heldout, guard = stages["evaluate"].result, stages["guard"].result
    champion = store.champion(campaign.id)
    if champion:
        against, reference = f"champion round {champion[0].number}, version {champion[1].mlflow_version}", \
            store.stages(champion[0].id)["evaluate"].result
    else:
        base = store.round_number(campaign.id, 0)
        against, reference = "base model, round 0", store.stages(base.id)["evaluate"].result
    reasons = regressions(cfg, heldout, reference, against)
    if guard["flagged"] and cfg.guard.action == "refuse_promotion":
        reasons.append("the collapse guard flagged this round: " + "; ".join(guard["reasons"]))
    alias = cfg.guard.champion_alias
    verdict = "off" if not alias else "refused" if reasons else "promoted"
    c, _, run_id = round_run(cfg, store, campaign, rnd)
    if verdict == "promoted":
        c.set_registered_model_alias(cfg.registered_model, alias, checkpoint.mlflow_version)
        store.set_promoted(round_id)
    store.add_decision(round_id, "promotion", verdict, reasons, {"against": against, "alias": alias,
                                                                  "version": checkpoint.mlflow_version})
    decision = store.decisions(round_id)  # the recorded decisions (a resumed stage keeps the first ones)
    for kind, d in decision.items():
        c.set_tag(run_id, f"speechalign.{kind}", d.verdict)
        c.set_tag(run_id, f"speechalign.{kind}.reasons", ("; ".join(d.reasons) or "none")[:4900])
    c.set_terminated(run_id)
    log.info("round %d promotion: %s%s", rnd.number, verdict, f" ({'; '.join(reasons)})" if reasons else "")
    return {"verdict": decision["promotion"].verdict, "reasons": decision["promotion"].reasons, "against": against,
            "alias": alias, "version": checkpoint.mlflow_version}
