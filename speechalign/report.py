"""The round-by-round report of a campaign, from the preference store alone.

One table, three renderings: plain text (`speechalign report`, and what `demo`, `round` and `campaign`
print at the end), markdown (`report --markdown`, the README's tables and the Prefect artifact) and JSON
(`report --json`). Its columns are figures by their names in speechalign/runtime/results.py.
"""

from __future__ import annotations

import statistics

from speechalign.config import Config, ConfigError, evaluation_setup, setup_differences
from speechalign.listen.figures import listening_figures
from speechalign.models.metrics import heldout_directions
from speechalign.preference_store.judgments import judged_items
from speechalign.preference_store.store import open_store, redact
from speechalign.runtime.context import round_record
from speechalign.stats.intervals import changes

TRAINING = {  # each training method's columns, shown when a round of the campaign trained that way
    "dpo": [("pairs", "pairs/pairs", "{:.0f}"), ("dpo acc", "dpo/rewards/accuracies", "{:.3f}"),
            ("dpo margin", "dpo/rewards/margins", "{:.3f}"), ("logp chosen", "dpo/logps/chosen", "{:.1f}")],
    "grpo": [("reward", "grpo/reward", "{:.3f}"), ("KL", "grpo/kl", "{:.4f}"),
             ("flat groups", "grpo/frac_reward_zero_std", "{:.2f}")],
}
COLUMNS = [  # (header, key, format); a training method's columns go after status
    ("round", "round", "{}"),
    ("status", "status", "{}"),
    ("WER", "heldout/asr_wer", "{:.3f}"),
    ("CER", "heldout/asr_cer", "{:.3f}"),
    ("UED", "heldout/unit_edit_distance", "{:.4f}"),
    ("golden NLL", "heldout/golden_nll", "{:.3f}"),
    ("OVRL", "heldout/dnsmos_ovrl", "{:.3f}"),
    ("spk sim", "heldout/speaker_similarity", "{:.3f}"),
    ("len ratio", "heldout/length_ratio", "{:.3f}"),
    ("unit KL", "heldout/unit_kl", "{:.3f}"),
    ("probe WER", "probe/asr_wer", "{:.3f}"),
    ("probe UED", "probe/unit_edit_distance", "{:.4f}"),
    ("guard", "guard", "{}"),
    ("promotion", "promotion", "{}"),
    ("version", "mlflow_version", "{}"),
    ("minutes", "minutes", "{:.1f}"),
]
CHANGED = [("WER", "asr_wer"), ("UED", "unit_edit_distance"), ("golden NLL", "golden_nll"), ("OVRL", "dnsmos_ovrl"),
           ("spk sim", "speaker_similarity")]  # the change table's columns: (header, held-out value)
CEILING_ROWS = {"recording": "recording", "golden_tokens": "golden tokens"}
TITLE = ("held-out prompts (probe: a fixed set of train prompts); round 0 = base model; UED = unit edit distance "
         "to golden; unit KL = golden vs sampled unit distribution")


def campaign_report(cfg: Config) -> dict:
    store = open_store(cfg.store_url)
    campaign = store.campaign(cfg.campaign.name)
    if campaign is None:
        return {"campaign": cfg.campaign.name, "rounds": []}
    rows, ceiling = [], {}
    for rnd in store.rounds(campaign.id):
        stages = store.stages(rnd.id)
        checkpoint = store.checkpoint(rnd.id)
        record = round_record(store, rnd)
        heldout = record.heldout
        if record.ceiling:
            ceiling = {name: {f"heldout/{k}": v for k, v in values.items()}
                       for name, values in record.ceiling.rows.items()}
        rows.append({
            "round": rnd.number, "status": rnd.status, "policy": rnd.policy_out or rnd.policy_in,
            **record.figures(),
            **{kind: d.verdict for kind, d in store.decisions(rnd.id).items()},
            **changes_of(heldout),
            "mlflow_run_id": rnd.mlflow_run_id, "mlflow_version": checkpoint.mlflow_version if checkpoint else None,
            "parent_version": checkpoint.parent_version if checkpoint else None,
            "minutes": sum(st.seconds or 0.0 for st in stages.values()) / 60,
            "stages": {name: {"status": st.status, "seconds": st.seconds, "attempts": st.attempts,
                              "error": (st.error or "").splitlines()[0] if st.error else None}
                       for name, st in stages.items()},
            "error": rnd.error,
        })
    listening = listening_figures(judged_items(store, campaign.id))
    return {"campaign": campaign.name, "store": redact(store.url), "registered_model": cfg.registered_model,
            "rounds": rows, "ceiling": ceiling.get("recording", {}), "golden_tokens": ceiling.get("golden_tokens", {}),
            **({"listening": listening} if listening["judgments"] else {})}


def changes_of(heldout) -> dict[str, dict]:
    """A round's changes as the JSON report has them: "ci" {"heldout/<metric>": {"vs_base": [low, high],
    "vs_previous": [low, high]}} and "change" {"heldout/<metric>": {"vs_base": mean change, ...}}."""
    ci: dict[str, dict] = {}
    change: dict[str, dict] = {}
    for against, found in (heldout.changes.items() if heldout else ()):
        for metric, (mean, low, high) in found.items():
            ci.setdefault(f"heldout/{metric}", {})[against] = [low, high]
            change.setdefault(f"heldout/{metric}", {})[against] = mean
    return {"ci": ci, "change": change}


def columns(report: dict) -> list[tuple[str, str, str]]:
    """COLUMNS, with the columns of each training method a round of the campaign used (DPO's pairs and rewards,
    GRPO's reward, KL and share of groups whose rollouts all scored alike)."""
    used = [cols for cols in TRAINING.values() if any(row.get(k) is not None for row in report["rounds"]
                                                      for _, k, _ in cols)]
    return [*COLUMNS[:2], *(c for cols in used for c in cols), *COLUMNS[2:]]


def row_cells(row: dict, cols: list[tuple[str, str, str]]) -> list[str]:
    """One round's figures as the report's columns show them ("-" where a round has no value)."""
    return [fmt.format(row[key]) if row.get(key) is not None else "-" for _, key, fmt in cols]


def ceiling_cells(report: dict, cols: list[tuple[str, str, str]]) -> list[list[str]]:
    """The ceiling rows: the held-out recordings, and their golden tokens decoded (scored once, at round 0)."""
    out = []
    for key, label in CEILING_ROWS.items():
        figures = report.get("ceiling" if key == "recording" else key) or {}
        if figures:
            out.append(row_cells({**figures, "round": label, "status": "ceiling"}, cols))
    return out


def change_cells(report: dict, against: str) -> list[list[str]]:
    """Per round after 0: each CHANGED metric's change with its 95% interval."""
    cells = []
    for row in report["rounds"]:
        if row["round"] == 0 or not row.get("ci"):
            continue
        cells.append([str(row["round"])] + [change_cell(row, metric, against) for _, metric in CHANGED])
    return cells


def change_cell(row: dict, metric: str, against: str) -> str:
    key = f"heldout/{metric}"
    change, ci = row["change"].get(key, {}).get(against), row["ci"].get(key, {}).get(against)
    return interval_cell(None if change is None else [change, *ci])


CHANGE_TITLES = {"vs_base": "change against round 0 (the base model)", "vs_previous": "change against the round before"}


def format_table(report: dict) -> str:
    if not report["rounds"]:
        return f"campaign {report['campaign']}: no rounds yet"
    cols = columns(report)
    lines = aligned([[h for h, _, _ in cols]] + [row_cells(row, cols) for row in report["rounds"]]
                    + ceiling_cells(report, cols))
    for against, title in CHANGE_TITLES.items():
        cells = change_cells(report, against)
        if cells:
            lines += ["", f"{title}, mean over held-out prompts [paired bootstrap 95% CI]",
                      *aligned([["round"] + [h for h, _ in CHANGED]] + cells)]
    failed = [r for r in report["rounds"] if r["status"] == "failed"]
    notes = [f"round {r['round']} failed: {r['error']} (run `speechalign round` to resume it)" for r in failed]
    listening = ["", format_listening(report["listening"])] if "listening" in report else []
    return "\n".join([f"campaign {report['campaign']}  ({TITLE})", *lines, *notes, *listening])


def markdown_rows(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown_table(report: dict) -> list[str]:
    cols = columns(report)
    lines = markdown_rows([h for h, _, _ in cols], [row_cells(r, cols) for r in report["rounds"]]
                          + ceiling_cells(report, cols))
    for against, title in CHANGE_TITLES.items():
        cells = change_cells(report, against)
        if cells:
            lines += ["", f"{title[0].upper()}{title[1:]}, mean over held-out prompts [paired bootstrap 95% CI]:", "",
                      *markdown_rows(["round"] + [h for h, _ in CHANGED], cells)]
    return lines


def format_markdown(report: dict) -> str:
    """The campaign's tables in markdown (the README's tables come from here)."""
    if not report["rounds"]:
        return f"campaign `{report['campaign']}`: no rounds yet"
    return "\n".join([f"Campaign `{report['campaign']}` ({TITLE}):", "", *markdown_table(report)])


def format_round_markdown(report: dict, number: int) -> str:
    """Round `number` for a Prefect markdown artifact: its status and stages, then every round's figures."""
    row = next(r for r in report["rounds"] if r["round"] == number)
    lines = [f"# Campaign `{report['campaign']}`, round {number}: {row['status']}", ""]
    if row["error"]:
        lines += [f"**Failed:** `{row['error']}`; `speechalign round` resumes it from its last completed stage.", ""]
    lines += ["| stage | status | seconds | attempts |", "|---|---|---:|---:|"]
    lines += [f"| {name} | {st['status']} | {st['seconds'] or 0:.1f} | {st['attempts']} |"
              for name, st in row["stages"].items()]
    lines += ["", "## All rounds (round 0 = base model)", "", *markdown_table(report)]
    version = f", version {row['mlflow_version']} (parent {row['parent_version']})" if row["mlflow_version"] else ""
    lines += ["", f"Registered model `{report['registered_model']}`{version}."]
    return "\n".join(lines)


def format_listening(figures: dict) -> str:
    """The human listening tests: win rate per comparison, agreement between raters and with the criterion."""
    raters = ", ".join(f"{name} {n}" for name, n in figures["raters"].items())
    cells = [["comparison", "wins", "losses", "ties", "judgments", "win rate", "95% CI"]]
    cells += [[r["label"], str(r["wins"]), str(r["losses"]), str(r["ties"]), str(r["judgments"]), share(r["rate"]),
               interval(r)] for r in figures["comparisons"]]
    agreement, criterion = figures["rater_agreement"], figures["criterion_agreement"]
    lines = [f"listening tests: {figures['judgments']} judgments ({raters}); win rate = the first side's wins / "
             "(wins + losses), ties left out; 95% Wilson interval", *aligned(cells)]
    lines.append(f"rater agreement: {agreement['items']} items judged by 2+ raters" + (
        f", pairwise agreement {share(agreement['percent_agreement'])}, "
        f"Fleiss' kappa {share(agreement['fleiss_kappa'])}"
        if agreement["items"] else ""))
    lines.append("raters vs the automatic criterion: " + (
        f"picked its chosen sample in {criterion['agree']} of {criterion['judgments']} non-tie judgments "
        f"({share(criterion['rate'])}, 95% CI {interval(criterion)}; {criterion['ties']} ties)"
        if criterion["judgments"] else "no non-tie judgments on automatic pairs yet"))
    return "\n".join(lines)


def share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def interval(figures: dict) -> str:
    return "-" if figures["ci_low"] is None else f"{figures['ci_low']:.3f}-{figures['ci_high']:.3f}"


def aligned(cells: list[list[str]]) -> list[str]:
    """A header row and data rows as right-aligned columns, with a rule under the header."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def ablation_report(cfg: Config, campaigns: dict[str, str], against: str | None = None) -> dict:
    """Per recipe of an ablation ({recipe: campaign}): its campaign's last completed round's held-out figures
    and their change against the base model with the 95% interval, its pairs, pair yield and guard and
    promotion decisions; plus the base model's row (round 0).

    With `against` (a recipe of `campaigns`, or any campaign of the store, e.g. the one the recipes vary),
    each row also gets its change against that campaign's last completed round ("vs_against"), paired by
    held-out prompt: every campaign of a work directory evaluates the same prompts with the same seeds, so
    this is the interval of a recipe against its control (DPO against SFT on the same pairs), not two
    intervals against the base model to compare by eye. A campaign whose held-out evaluation differs
    (config.evaluation_setup: e.g. greedy against sampled) is not compared ("not_comparable" names the knobs),
    and one evaluated otherwise than the base model row says so ("evaluated_otherwise")."""
    store = open_store(cfg.store_url)
    reference, reference_prompts = against_round(store, campaigns, against) if against else (None, None)
    reference_setup = evaluation_setup(store.campaign(reference["campaign"]).config) if reference else None
    rows, base, base_setup = [], None, None
    for recipe, name in campaigns.items():
        campaign = store.campaign(name)
        if campaign is None:
            rows.append({"recipe": recipe, "campaign": name, "criterion": None, "rounds": 0})
            continue
        done = [(r, round_record(store, r)) for r in store.rounds(campaign.id) if r.status == "completed"]
        setup = evaluation_setup(campaign.config)
        if base is None and done and done[0][0].number == 0:
            base = {"recipe": "base model", "campaign": "round 0", "criterion": "-", "rounds": 0,
                    **heldout(done[0][1])}
            base_setup = setup
        rounds = [(r, record) for r, record in done if r.number > 0]
        pairs = [record.figures() for _, record in rounds]
        decisions = [store.decisions(r.id) for r, _ in rounds]
        last = rounds[-1][1].heldout if rounds else None
        rows.append({
            "recipe": recipe, "campaign": name, "criterion": campaign.config.get("pairs", {}).get("criterion"),
            "rounds": len(rounds), **(heldout(rounds[-1][1]) if rounds else {}), **changes_of(last),
            "pairs": sum(int(p.get("pairs/pairs", 0)) for p in pairs),
            "pair_yield": statistics.fmean(yields) if (yields := [p["pairs/pair_yield"] for p in pairs
                                                                   if "pairs/pair_yield" in p]) else None,
            "guard_flags": sum(d.get("guard") is not None and d["guard"].verdict == "flagged" for d in decisions),
            "promoted": sum(d.get("promotion") is not None and d["promotion"].verdict == "promoted" for d in decisions),
        })
        if base_setup is not None and setup != base_setup:  # its changes are against its own round 0
            rows[-1]["evaluated_otherwise"] = setup_differences(setup, base_setup)
        if reference and last and name != reference["campaign"]:
            if setup == reference_setup:
                rows[-1]["vs_against"] = {f"heldout/{m}": c
                                          for m, c in changes(last.per_prompt, reference_prompts).items()}
            else:  # other samples of other prompts' draws: a difference of means would mix setup and policy
                rows[-1]["not_comparable"] = setup_differences(setup, reference_setup)
    metrics = sorted({k for r in rows + [base or {}] for k in r if k.startswith("heldout/")})
    return {"rows": ([base] if base else []) + rows, "metrics": metrics, "directions": heldout_directions(cfg.score),
            **({"against": reference} if reference else {})}


def final_report(final: dict[str, dict[str, dict[int, float]]], campaigns: dict[str, str],
                 against: str | None) -> dict:
    """The final evaluation's figures (flows/final_evaluation.py): per recipe, the mean of each figure over the test
    prompts, its change against the base model and against `against`'s recipe, paired by prompt [95% interval]."""
    base = final["base model"]
    versus = final.get(campaigns.get(against, against)) if against else None
    rows = [{"recipe": "base model", **{f"test/{m}": statistics.fmean(v.values()) for m, v in base.items() if v}}]
    for recipe, name in campaigns.items():
        if name not in final:
            continue
        figures = final[name]
        row = {"recipe": recipe, **{f"test/{m}": statistics.fmean(v.values()) for m, v in figures.items() if v},
               "vs_base": changes(figures, base)}
        if versus is not None and final[name] is not versus:
            row["vs_against"] = changes(figures, versus)
        rows.append(row)
    return {"prompts": len(next(iter(base.values()), {})), "against": against, "rows": rows}


def format_final(final: dict) -> list[str]:
    lines = ["", f"final evaluation: each recipe's last round on {final['prompts']} test prompts, in no other split; "
             "change against the base model, mean over test prompts [paired bootstrap 95% CI]"]
    cells = [["recipe"] + [h for h, _ in CHANGED]]
    cells += [[r["recipe"]] + [interval_cell(r["vs_base"].get(m)) for _, m in CHANGED]
              for r in final["rows"] if "vs_base" in r]
    lines += aligned(cells)
    if final["against"]:
        cells = [["recipe"] + [h for h, _ in CHANGED]]
        cells += [[r["recipe"]] + [interval_cell(r["vs_against"].get(m)) for _, m in CHANGED]
                  for r in final["rows"] if "vs_against" in r]
        lines += ["", f"final evaluation: change against {final['against']}, paired by test prompt [95% CI]",
                  *aligned(cells)]
    return lines


def against_round(store, campaigns: dict[str, str], against: str) -> tuple[dict, dict[str, dict[int, float]]]:
    """The campaign `against` names (a recipe of this ablation, or a campaign's own name), its last completed
    round, and that round's held-out figures per prompt."""
    name = campaigns.get(against, against)
    campaign = store.campaign(name)
    if campaign is None:
        raise ConfigError(f"--against {against!r}: no recipe of this ablation and no campaign of the store has that "
                          f"name; give a recipe ({', '.join(campaigns)}) or a campaign "
                          f"({', '.join(c.name for c in store.campaigns())})")
    done = [r for r in store.rounds(campaign.id) if r.status == "completed"]
    heldout = round_record(store, done[-1]).heldout if done else None
    if heldout is None:
        raise ConfigError(f"--against {against!r}: campaign {name} has no evaluated round yet; run it first")
    return {"recipe": against, "campaign": name, "round": done[-1].number}, heldout.per_prompt


def heldout(record) -> dict[str, float]:
    return {k: v for k, v in record.figures().items() if k.startswith("heldout/")}


def format_ablation(report: dict) -> str:
    """GenSR-Pref's Table 3 layout: one row per recipe (and the base model), a column per held-out metric of
    its last round; then each recipe's change against the base model, with its 95% interval."""
    arrows = {True: " ^", False: " v"}
    headers = ["recipe", "rounds"] + [m.removeprefix("heldout/") + arrows.get(
        report["directions"].get(m.removeprefix("heldout/")), "") for m in report["metrics"]]
    headers += ["pairs", "yield", "flags", "promoted"]
    cells = [headers]
    for r in report["rows"]:
        cells.append([str(r.get("recipe") or r["campaign"]), str(r["rounds"])]
                     + [f"{r[m]:.4f}" if r.get(m) is not None else "-" for m in report["metrics"]]
                     + [str(r.get("pairs", "-")), f"{r['pair_yield']:.3f}" if r.get("pair_yield") is not None else "-",
                        str(r.get("guard_flags", "-")), str(r.get("promoted", "-"))])
    changed = [["recipe"] + [h for h, _ in CHANGED]]
    for r in report["rows"]:
        if r.get("ci"):
            changed.append([str(r["recipe"])] + [change_cell(r, metric, "vs_base") for _, metric in CHANGED])
    lines = ["held-out metrics of each recipe's last round (^ higher is better, v lower is better)", *aligned(cells)]
    lines += [f"{r['recipe']}: held out evaluated otherwise than the base model row "
              f"({'; '.join(r['evaluated_otherwise'])}); its change below is against its own round 0"
              for r in report["rows"] if r.get("evaluated_otherwise")]
    if len(changed) > 1:
        lines += ["", "change against the base model, mean over held-out prompts [paired bootstrap 95% CI]",
                  *aligned(changed)]
    if against := report.get("against"):
        versus = [["recipe"] + [h for h, _ in CHANGED]]
        for r in report["rows"]:
            if r.get("vs_against"):
                vs = r["vs_against"]
                versus.append([str(r["recipe"])] + [interval_cell(vs.get(f"heldout/{m}")) for _, m in CHANGED])
        lines += ["", f"change against {against['recipe']} (campaign {against['campaign']}, round {against['round']}), "
                  "mean over held-out prompts [paired bootstrap 95% CI]", *aligned(versus)]
        lines += [f"{r['recipe']}: not compared, held out evaluated otherwise ({'; '.join(r['not_comparable'])})"
                  for r in report["rows"] if r.get("not_comparable")]
    if report.get("final"):
        lines += format_final(report["final"])
    return "\n".join(lines)


def interval_cell(change: list[float] | None) -> str:
    return "-" if change is None else f"{change[0]:+.3f} [{change[1]:+.3f}, {change[2]:+.3f}]"
