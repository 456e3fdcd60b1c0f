"""The collapse guard and the promotion gate: they decide on paired bootstrap intervals, not on means.

A held-out metric regresses when the 95% interval of its change (speechalign/stats/intervals.py: prompt by
prompt, the same seeds every round) lies entirely on the worse side, beyond the metric's tolerance
(guard.tolerances; others guard.default_tolerance of the reference value). A mean that crossed the
tolerance while its interval still reaches it is noise, and not a regression.

Guard (stage `guard`, after evaluate). GenSR-Pref saw a fixed ground-truth winner collapse the model:
DPO reward accuracy saturates, reward margins inflate, and the chosen side's likelihood falls while
quality drops. A round is flagged when, at the end of its DPO training,
  - rewards/accuracies >= guard.accuracy_limit, and rewards/margins >= guard.margin_limit, and the
    chosen side falls: rewards/chosen < 0 (the policy finds the chosen sequences less likely than its
    reference did) or logps/chosen below the previous round's;
  - or a held-out metric regressed against the previous round.
guard.action decides what a flag does: warn (log it), stop (the campaign stops after this round and
refuses new rounds until the action is changed), refuse_promotion (the round is never champion).

Gate (stage `promote`, after register). The round's model version gets the MLflow alias
guard.champion_alias only if, against the current champion (the base model, round 0, until a round is
promoted): no held-out metric regressed, and no metric of guard.gate_metrics has a worse mean, however
little. So the champion never gets worse: a run of rounds each a little worse than the last leaves it
where it is. Both decisions, with their reasons and figures, go to the store (round_decisions) and onto
the round's MLflow run as tags.

`guard_verdict` and `promotion_verdict` decide from their arguments alone; the stages record and act.
"""

from __future__ import annotations

import dataclasses
import logging

from speechalign.config import Config, GuardConfig
from speechalign.models.metrics import heldout_directions
from speechalign.preference_store.store import PreferenceStore
from speechalign.runtime.context import RoundContext
from speechalign.runtime.results import Heldout, Promotion, Registered, RoundRecord, Trained, Verdict
from speechalign.runtime.stage import stage
from speechalign.runtime.tracking import round_run
from speechalign.stats.intervals import changes, worse_beyond

log = logging.getLogger(__name__)


def regressions(guard: GuardConfig, directions: dict[str, bool], current: dict[str, float],
                reference: dict[str, float], changed: dict[str, list[float]], against: str) -> list[str]:
    """One sentence per held-out metric whose change against `reference` is worse beyond its tolerance,
    interval and all (`changed`: metric -> [mean change, low, high], as tasks/evaluate.py gives every figure)."""
    reasons = []
    for metric, higher in directions.items():
        now, ref, change = current.get(metric), reference.get(metric), changed.get(metric)
        if now is None or ref is None or change is None:
            continue
        tolerance = guard.tolerances.get(metric, guard.default_tolerance * abs(ref))
        if worse_beyond(change, higher, tolerance):
            worse = -change[0] if higher else change[0]
            reasons.append(f"held-out {metric} {now:.4f} vs {ref:.4f} ({against}): worse by {worse:.4f}, 95% CI of "
                           f"the change {change[1]:+.4f} to {change[2]:+.4f}, beyond the tolerance {tolerance:.4f}")
    return reasons


def collapse_signals(guard: GuardConfig, final: dict[str, float],
                     previous: dict[str, float] | None = None) -> list[str]:
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
    if acc >= guard.accuracy_limit and margin >= guard.margin_limit and falling:
        return [f"DPO collapse: reward accuracy {acc:.3f} >= {guard.accuracy_limit}, reward margin {margin:.3f} >= "
                f"{guard.margin_limit}, and {' and '.join(falling)}"]
    return []


def guard_verdict(cfg: Config, trained: Trained, heldout: Heldout, previous: RoundRecord | None) -> Verdict:
    """Flag the round for DPO collapse, or for a held-out regression against the previous round."""
    before = previous.trained.final if previous and previous.trained else None
    collapse = collapse_signals(cfg.guard, trained.final, before)
    regressed = regressions(cfg.guard, heldout_directions(cfg.score), heldout.metrics,
                            previous.heldout.metrics if previous and previous.heldout else {},
                            heldout.changes.get("vs_previous", {}), f"round {previous.number}" if previous else "")
    return Verdict(flagged=bool(collapse or regressed), collapse=bool(collapse), reasons=tuple(collapse + regressed),
                   action=cfg.guard.action)


@stage
def guard(ctx: RoundContext, trained: Trained, heldout: Heldout, previous: RoundRecord | None) -> Verdict:
    verdict = guard_verdict(ctx.cfg, trained, heldout, previous)
    details = {"dpo": {k: trained.final.get(k) for k in ("rewards/accuracies", "rewards/margins", "rewards/chosen",
                                                         "logps/chosen")},
               "heldout": heldout.metrics,
               "previous_heldout": previous.heldout.metrics if previous and previous.heldout else {},
               "action": verdict.action}
    ctx.store.add_decision(ctx.round.id, "guard", "flagged" if verdict.flagged else "ok", list(verdict.reasons),
                           details)
    if verdict.flagged:
        log.warning("collapse guard flagged round %d (action: %s): %s", ctx.number, verdict.action,
                    "; ".join(verdict.reasons))
    return verdict


def promotion_verdict(cfg: Config, heldout: Heldout, champion: RoundRecord, verdict: Verdict) -> Promotion:
    """Promoted, refused or off (no alias configured); see the module's docstring."""
    registered = champion.get(Registered)
    against = (f"champion round {champion.number}, version {registered.version}" if champion.number > 0 and registered
               else "base model, round 0")
    reference = champion.heldout or heldout
    directions = heldout_directions(cfg.score)
    changed = heldout.changes.get("vs_champion") or changes(heldout.per_prompt, reference.per_prompt)
    reasons = regressions(cfg.guard, directions, heldout.metrics, reference.metrics, changed, against)
    for metric in cfg.guard.gate_metrics:
        now, ref = heldout.metrics.get(metric), reference.metrics.get(metric)
        if now is not None and ref is not None and (now < ref if directions[metric] else now > ref):
            reasons.append(f"held-out {metric} {now:.4f} is worse than the {against}'s {ref:.4f} (guard.gate_metrics: "
                           "the champion is replaced only by a round at least as good on these)")
    if verdict.flagged and cfg.guard.action == "refuse_promotion":
        reasons.append("the collapse guard flagged this round: " + "; ".join(verdict.reasons))
    alias = cfg.guard.champion_alias
    return Promotion(verdict="off" if not alias else "refused" if reasons else "promoted", reasons=tuple(reasons),
                     against=against, alias=alias)


@stage
def promote(ctx: RoundContext, registered: Registered, heldout: Heldout, verdict: Verdict) -> Promotion:
    cfg, store = ctx.cfg, ctx.store
    decision = promotion_verdict(cfg, heldout, ctx.champion, verdict)
    c, _, _, run_id = round_run(cfg, store, ctx.campaign, ctx.round)
    if decision.verdict == "promoted":
        c.set_registered_model_alias(cfg.registered_model, decision.alias, registered.version)
        store.set_promoted(ctx.round.id)
    store.add_decision(ctx.round.id, "promotion", decision.verdict, list(decision.reasons),
                       {"against": decision.against, "alias": decision.alias, "version": registered.version})
    decisions = store.decisions(ctx.round.id)  # the recorded decisions (a resumed stage keeps the first ones)
    for kind, d in decisions.items():
        c.set_tag(run_id, f"speechalign.{kind}", d.verdict)
        c.set_tag(run_id, f"speechalign.{kind}.reasons", ("; ".join(d.reasons) or "none")[:4900])
    c.set_terminated(run_id)
    log.info("round %d promotion: %s%s", ctx.number, decision.verdict,
             f" ({'; '.join(decision.reasons)})" if decision.reasons else "")
    recorded = decisions["promotion"]
    return dataclasses.replace(decision, verdict=recorded.verdict, reasons=tuple(recorded.reasons),
                               version=registered.version)


def stopped_by_guard(cfg: Config, store: PreferenceStore, campaign_id: int) -> str | None:
    """Why the campaign may not run another round (its guard stopped it), or None."""
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
