"""`speechalign ablate`: the same campaign under two criteria from one base model, and its table."""

import json

import pytest

from speechalign.cli import main
from speechalign.preference_store.schema import Campaign
from speechalign.preference_store.store import open_store
from speechalign.report import ablation_report, format_ablation


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_ablate_runs_each_criterion_as_a_campaign_from_the_same_base(bootstrapped, capsys):
    cfg = bootstrapped
    args = ["ablate", "--workdir", str(cfg.workdir), "--criteria", "golden_vs_synthetic,single:dnsmos_ovrl",
            "--rounds", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("held-out metrics of each recipe's last round")
    header = lines[1].split()
    assert {"dnsmos_ovrl", "unit_edit_distance", "asr_cer", "speaker_similarity"} <= set(header)
    rows = {line.split()[0]: line.split() for line in lines[3:6]}
    assert set(rows) == {"base", "golden_vs_synthetic", "single:dnsmos_ovrl"}  # "base model": round 0's row
    at = lines.index("change against the base model, mean over held-out prompts [paired bootstrap 95% CI]")
    changes = {line.split()[0]: line for line in lines[at + 3:at + 5]}
    assert set(changes) == {"golden_vs_synthetic", "single:dnsmos_ovrl"}
    assert all(line.count("[") == 5 for line in changes.values())  # WER, UED, golden NLL, OVRL, spk sim

    store = open_store(cfg.store_url)
    report = json.loads((cfg.workdir / f"ablation-{cfg.campaign.name}.json").read_text())
    base, gvs, single = report["rows"]
    for row, criterion in ((gvs, "golden_vs_synthetic"), (single, "single:dnsmos_ovrl")):
        campaign = store.campaign(row["campaign"])
        assert campaign.config["pairs"]["criterion"] == criterion and row["rounds"] == 1
        assert campaign.base_model_path == store.campaign(gvs["campaign"]).base_model_path
        [_, first] = store.rounds(campaign.id)
        assert {p.criterion for p in store.pairs(first.id)} == {criterion}
        stored = store.stages(first.id)["evaluate"].result["metrics"]
        assert row["heldout/unit_edit_distance"] == stored["unit_edit_distance"]
        assert 0 < row["pair_yield"] <= 1
    # round 0 was evaluated once: the second campaign's is a copy (same samples and files, same figures)
    first, second = (store.rounds(store.campaign(r["campaign"]).id)[0] for r in (gvs, single))
    assert store.stages(first.id)["evaluate"].result == store.stages(second.id)["evaluate"].result
    copies = [{(s.prompt_id, s.kind, s.k): (s.audio_path, store.scores(r.id).get(s.id)) for s in store.samples(r.id)}
              for r in (first, second)]
    assert copies[0] == copies[1] and len(copies[0]) > 10
    assert {"evaluate", "register"} <= store.stages(second.id).keys() and second.status == "completed"
    # the single-metric criterion pairs candidates: the chosen one has the higher DNSMOS OVRL every time
    campaign = store.campaign(single["campaign"])
    first = store.rounds(campaign.id)[1]
    assert all(p.margins["dnsmos_ovrl"] > 0 for p in store.pairs(first.id))
    assert main(args) == 0  # run again: both campaigns are done, nothing runs, the same table
    assert capsys.readouterr().out.splitlines()[3:6] == lines[3:6]
    assert report["rows"][1]["recipe"] == "golden_vs_synthetic"  # the campaign the recipes vary has no round yet

    # a recipe against another (its control), paired by held-out prompt: the mean of the per-prompt differences
    assert main([*args, "--against", "golden_vs_synthetic"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("change against golden_vs_synthetic (campaign"))
    [versus] = [line.split() for line in lines[at + 3:] if line.strip() and not line.startswith("(also")]
    assert versus[0] == "single:dnsmos_ovrl"  # the control itself has no row
    report = json.loads((cfg.workdir / f"ablation-{cfg.campaign.name}.json").read_text())
    assert report["against"] == {"recipe": "golden_vs_synthetic", "campaign": gvs["campaign"], "round": 1}
    lasts = [store.stages(store.rounds(store.campaign(r["campaign"]).id)[-1].id)["evaluate"].result["per_prompt"]
             for r in (single, gvs)]
    for metric in ("unit_edit_distance", "dnsmos_ovrl"):
        now, before = lasts[0][metric], lasts[1][metric]
        diffs = [now[p] - before[p] for p in now]
        mean, low, high = report["rows"][2]["vs_against"][f"heldout/{metric}"]
        assert mean == pytest.approx(sum(diffs) / len(diffs)) and low <= mean <= high
    assert main([*args, "--against", "no-such-recipe"]) == 2  # named in the error, with the names it could be
    assert "no-such-recipe" in capsys.readouterr().err

    # a campaign whose held-out samples are drawn otherwise (as `--set evaluate.mode=greedy` would make it) has
    # other figures for the same policy: it is not compared against the control, and the table says why
    campaign = store.campaign(single["campaign"])
    mode = campaign.config["evaluate"]["mode"]
    other = {"greedy": "sampled", "sampled": "greedy"}[mode]
    with store.session() as s:
        s.get(Campaign, campaign.id).config = {**campaign.config, "evaluate": {**campaign.config["evaluate"],
                                                                               "mode": other}}
    recipes = {"golden_vs_synthetic": gvs["campaign"], "single:dnsmos_ovrl": single["campaign"]}
    report = ablation_report(cfg, recipes, "golden_vs_synthetic")
    [row] = [r for r in report["rows"] if r.get("recipe") == "single:dnsmos_ovrl"]
    assert "vs_against" not in row
    assert row["not_comparable"] == [f"evaluate.mode = {other!r} (not {mode!r})"]
    assert row["evaluated_otherwise"] == row["not_comparable"]  # its round 0 is the base model row's copy
    text = format_ablation(report)
    assert f"single:dnsmos_ovrl: not compared, held out evaluated otherwise (evaluate.mode = {other!r}" in text

    # once the campaign the recipes vary has rounds of its own (what `make demo` runs), it is a row of the table too,
    # and the recipes can be compared against it
    from speechalign.flows.campaign import alignment_campaign

    alignment_campaign(str(cfg.workdir), rounds=1)
    assert main([*args, "--against", cfg.campaign.name]) == 0
    report = json.loads((cfg.workdir / f"ablation-{cfg.campaign.name}.json").read_text())
    assert [r["recipe"] for r in report["rows"]] == ["base model", f"{cfg.campaign.name} (default)",
                                                     "golden_vs_synthetic", "single:dnsmos_ovrl"]
    assert report["rows"][1]["campaign"] == cfg.campaign.name and report["rows"][1]["rounds"] == 1
    assert report["against"]["campaign"] == cfg.campaign.name
