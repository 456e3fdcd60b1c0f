"""`speechalign`: the command line.

    speechalign demo [--workdir W] [--rounds N]
    speechalign bootstrap --manifest M.jsonl --workdir W
    speechalign round --workdir W
    speechalign campaign --workdir W --rounds N
    speechalign report --workdir W [--json | --markdown]
    speechalign listen --workdir W [--port P] [--add-rater NAME]   the A/B listening page for raters
    speechalign ablate --workdir W (--criteria golden_vs_synthetic,unanimous | --recipes FILE.toml) --rounds N
    speechalign policy --workdir W --round N --out DIR    a round's merged policy again (base + adapters)
    speechalign plan --workdir W [--json]   disk a round adds, peak memory, token budget: before a round
    speechalign db upgrade [--db URL]
    speechalign config [--workdir W] [--defaults]   print the effective config (every knob, described)
    speechalign train-codec --manifest M --out DIR [--from DIR --decoder-steps N]
    speechalign codec-report --workdir W [--card MODEL_CARD.md]   codec audio quality on held-out audio
    speechalign vllm-serve --workdir W      the vLLM server generate.backend = "vllm" generates with

Every command takes --config FILE and --set section.key=value.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

# Set before the libraries read them: no Hub look-ups, a patient ephemeral Prefect server, quiet tokenizers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # its telemetry write races the ephemeral DB
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "speechalign")  # our progress lines in Prefect's log
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar, at every load
if not sys.stderr.isatty():  # a log file, CI, a served deployment: no library's bars (ours log their progress)
    os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore", message=".*weight_norm.*")
warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated.*")


def _common(p: argparse.ArgumentParser, workdir_default: str | None = None) -> None:
    p.add_argument("--workdir", default=workdir_default, help="work directory (store, models, MLflow, corpus)")
    p.add_argument("--config", help="TOML config file (see `speechalign config`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config knob, e.g. --set train.learning_rate=1e-4 (repeatable)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="speechalign", description="Iterative preference alignment of codec LMs.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="build the demo corpus, bootstrap, run N rounds, print the table")
    _common(p, "speechalign-demo")
    p.add_argument("--rounds", type=int, default=None, help="rounds to run (default: campaign.rounds, 3)")
    p = sub.add_parser("bootstrap", help="import a corpus, encode golden tokens, make the base model")
    _common(p)
    p.add_argument("--manifest", help="JSONL manifest; without it, the demo corpus")
    p.add_argument("--base-model", help="your Hugging Face causal-LM directory (default: the demo model)")
    p = sub.add_parser("round", help="run one more round (or finish an interrupted one)")
    _common(p)
    p = sub.add_parser("campaign", help="run N more rounds")
    _common(p)
    p.add_argument("--rounds", type=int, required=True)
    p = sub.add_parser("serve", help="serve the round flow as a Prefect deployment, on a cron schedule")
    _common(p)
    p.add_argument("--cron", help='schedule, e.g. "0 3 * * *" (none: runs only when triggered by hand)')
    p = sub.add_parser("report", help="per round: pairs, DPO metrics, held-out metrics, model version")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.add_argument("--markdown", action="store_true", help="print the table in markdown (as the README shows it)")
    p = sub.add_parser("listen", help="the A/B listening page: raters judge pairs of clips into the store")
    _common(p)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--add-rater", metavar="NAME", help="register a rater, print their token once, and exit")
    p.add_argument("--items", type=int, default=20, help="items per comparison and round (a seeded subset; default 20)")
    p = sub.add_parser("ablate", help="the same campaign under each pair criterion or recipe; a table of held-out "
                                      "metrics and their changes against the base model")
    _common(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--criteria", help="comma-separated: golden_vs_synthetic, unanimous, single:<metric> (e.g. "
                                          "single:dnsmos_ovrl)")
    which.add_argument("--recipes", help="a TOML file, one table of knobs per recipe (see flows/ablation.py)")
    p.add_argument("--rounds", type=int, required=True, help="rounds per recipe")
    p.add_argument("--against", metavar="RECIPE", help="also each recipe's change against this recipe's last round (or "
                                                      "a campaign's, e.g. the default one), paired by held-out prompt: "
                                                      "a recipe against its control")
    p.add_argument("--final", type=int, default=0, metavar="N",
                   help="then evaluate every recipe's last round and the base model on N test prompts in no other "
                        "split (the demo speaks new sentences for them), paired across recipes")
    p.add_argument("--final-manifest", help="your corpus's test recordings for --final (JSONL, in no other split)")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p = sub.add_parser("policy", help="write a round's merged policy again, from the base model and the adapters")
    _common(p)
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--out", required=True, help="directory to write the policy to")
    p = sub.add_parser("plan", help="disk a round adds, peak memory of training and generation, and the token "
                                    "budget against the longest utterance, before a round and without the weights")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p = sub.add_parser("vllm-serve", help="run the vLLM server of a work directory (generate.backend = \"vllm\"): "
                                          "its current policy, then the policy each stage generates with")
    _common(p)
    p = sub.add_parser("db", help="preference store schema")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="run Alembic migrations to head")
    _common(up)
    up.add_argument("--db", help="SQLAlchemy URL (default: the work directory's store)")
    p = sub.add_parser("config", help="print the effective config as TOML, each knob described")
    _common(p)
    p.add_argument("--defaults", action="store_true", help="the defaults only (speechalign.toml is this output)")
    p = sub.add_parser("train-codec", help="build the demo codec from a corpus (distilled encoder + fitted RVQ)")
    p.add_argument("--manifest", help="JSONL manifest; without it, an espeak corpus of 800 utterances in 4 voices")
    p.add_argument("--out", required=True)
    p.add_argument("--distill-steps", type=int, default=3000)
    p.add_argument("--layer1-codes", type=int, default=64)
    p.add_argument("--decoder-steps", type=int, default=4500,
                   help="decoder training steps (resumes from DIR/decoder_state.pt when a run stopped); 0 skips it")
    p.add_argument("--from", dest="start_from", metavar="DIR",
                   help="keep this codec's encoder and codebooks (skips distillation and k-means)")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("codec-report", help="DNSMOS, speaker similarity and spectral distance of the codec's audio")
    _common(p)
    p.add_argument("--limit", type=int, default=40, help="held-out utterances to measure")
    p.add_argument("--card", help="write the figures into this model card's reconstruction section")
    return ap


def _config(args):
    from speechalign.config import load_config
    from speechalign.runtime.preflight import check_names

    return check_names(load_config(args.config, args.overrides, args.workdir or None))


def _flow_args(cfg, args) -> dict:
    return {"workdir": str(cfg.workdir), "config_file": args.config, "overrides": args.overrides}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "listen":
        return cmd_listen(args)
    from speechalign.config import ConfigError
    from speechalign.errors import CampaignStopped, SetupError
    from speechalign.preference_store.round_lock import RoundBusy
    from speechalign.runtime.preflight import PreflightError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, PreflightError, SetupError, FileNotFoundError) as exc:
        print(f"speechalign: error: {exc}", file=sys.stderr)
        return 2
    except RoundBusy as exc:
        print(f"speechalign: busy: {exc}", file=sys.stderr)
        return 3
    except CampaignStopped as exc:
        print(f"speechalign: stopped: {exc}", file=sys.stderr)
        return 4


def cmd_demo(args) -> int:
    started = time.monotonic()
    if args.rounds is not None:
        args.overrides = [*args.overrides, f"campaign.rounds={args.rounds}"]
    cfg = _config(args)
    _prepare(cfg)
    from speechalign.flows.bootstrap import bootstrap
    from speechalign.flows.campaign import alignment_campaign

    bootstrap(**_flow_args(cfg, args))
    report_before = _report(cfg)
    done = sum(1 for r in report_before["rounds"] if r["round"] > 0 and r["status"] == "completed")
    todo = max(0, cfg.campaign.rounds - done)
    if todo:
        alignment_campaign(rounds=todo, **_flow_args(cfg, args))
    _print_report(cfg)
    print(f"\ndemo wall time: {(time.monotonic() - started) / 60:.1f} min")
    from speechalign.preference_store.store import open_store
    from speechalign.runtime.tracking import ui_link

    campaign = open_store(cfg.store_url).campaign(cfg.campaign.name)
    command, url = ui_link(cfg, campaign.mlflow_experiment_id if campaign else None)
    print(f"MLflow: {os.path.join(os.path.dirname(sys.executable), command)}\n        then open {url}")
    print(f"Listen: every sample's WAV is under {cfg.layout.campaign_dir}/round-NNN/audio/ (heldout/, candidate/, "
          "golden/); each round's MLflow run has audio/ with the recording, its golden tokens decoded and the "
          "round's sample for three held-out sentences")
    return 0


def cmd_bootstrap(args) -> int:
    if args.manifest and not os.path.isfile(args.manifest):
        raise FileNotFoundError(f"manifest {args.manifest} does not exist; give a JSONL file with one "
                                '{"id", "text", "audio", "speaker"?} object per line')
    if args.manifest:
        args.overrides = [*args.overrides, f"corpus.manifest={json.dumps(os.path.abspath(args.manifest))}"]
    if args.base_model:
        args.overrides = [*args.overrides, f"model.base_model={json.dumps(os.path.abspath(args.base_model))}"]
    _require_workdir(args)
    cfg = _config(args)
    _prepare(cfg, mlflow_too=False)
    from speechalign.flows.bootstrap import bootstrap

    result = bootstrap(**_flow_args(cfg, args))
    imported = result["import"]
    print(f"imported {imported['imported']} utterances ({imported['heldout']} held out, {imported['sft']} for the base "
          f"model's SFT alone), skipped {imported['skipped']}, repaired {len(imported['repaired'])}")
    for problem in imported["problems"]:
        print(f"  {problem}")
    print(f"base model: {result['base_model']}")
    return 0


def cmd_round(args) -> int:
    _require_workdir(args)
    cfg = _config(args)
    _prepare(cfg)
    from speechalign.flows.common import ensure_campaign
    from speechalign.flows.round import alignment_round

    ensure_campaign(cfg)  # fails here, with what to run, if bootstrap has not been run

    alignment_round(**_flow_args(cfg, args))
    _print_report(cfg)
    return 0


def cmd_serve(args) -> int:
    if not args.config:
        _require_workdir(args)
    cfg = _config(args)
    _prepare(cfg)
    from prefect.settings import PREFECT_API_URL

    from speechalign.flows.common import ensure_campaign
    from speechalign.flows.serve import deployment_name, serve_rounds

    ensure_campaign(cfg)
    if not PREFECT_API_URL.value():
        print("speechalign: error: serving needs a Prefect server that triggers can reach: start one with "
              "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api", file=sys.stderr)
        return 2
    print(f"serving alignment-round/{deployment_name(cfg)}"
          + (f" on cron {args.cron!r}" if args.cron else "")
          + f"; trigger one round with: prefect deployment run 'alignment-round/{deployment_name(cfg)}'",
          flush=True)
    serve_rounds(cfg, args.cron, args.config, args.overrides)
    return 0


def cmd_campaign(args) -> int:
    _require_workdir(args)
    cfg = _config(args)
    _prepare(cfg)
    from speechalign.flows.campaign import alignment_campaign
    from speechalign.flows.common import ensure_campaign

    ensure_campaign(cfg)

    alignment_campaign(rounds=args.rounds, **_flow_args(cfg, args))
    _print_report(cfg)
    return 0


def cmd_ablate(args) -> int:
    from speechalign.config import ConfigError
    from speechalign.flows.ablation import ablation, campaign_name, criteria_recipes, read_recipes

    _require_workdir(args)
    if args.criteria is not None:
        recipes = criteria_recipes([c.strip() for c in args.criteria.split(",") if c.strip()])
    else:
        recipes = read_recipes(args.recipes)
    if not recipes:
        raise ConfigError("no recipes: name at least one, e.g. --criteria golden_vs_synthetic,unanimous")
    cfg = _config(args)
    _prepare(cfg)
    from pathlib import Path

    from speechalign.preference_store.store import open_store
    from speechalign.report import ablation_report, against_round, format_ablation

    if args.against and args.against not in recipes:  # a campaign that must exist already: check before any round
        named = {r: campaign_name(cfg.campaign.name, r) for r in recipes}
        against_round(open_store(cfg.store_url), named, args.against)
    names = ablation(recipes=recipes, rounds=args.rounds, **_flow_args(cfg, args))
    from speechalign.flows.ablation import recipe_overrides

    campaigns = dict(zip(recipes, names))
    overrides = {name: recipe_overrides(cfg.campaign.name, recipe, knobs, args.overrides)
                 for (recipe, knobs), name in zip(recipes.items(), names)}
    if _has_rounds(cfg, cfg.campaign.name) and cfg.campaign.name not in names:  # the campaign the recipes vary
        campaigns = {f"{cfg.campaign.name} (default)": cfg.campaign.name, **campaigns}  # (make demo's): a row too
        overrides = {cfg.campaign.name: [*(args.overrides or []), f"campaign.name={cfg.campaign.name}"], **overrides}
    report = ablation_report(cfg, campaigns, args.against)
    if args.final:
        from speechalign.flows.final_evaluation import final_evaluation
        from speechalign.report import final_report

        final = final_evaluation(str(cfg.workdir), overrides, args.final, args.final_manifest, args.config)
        report["final"] = final_report(final, campaigns, args.against)
    out = Path(cfg.workdir) / f"ablation-{cfg.campaign.name}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str) if args.json else f"{format_ablation(report)}\n\n(also in {out})")
    return 0


def _has_rounds(cfg, name: str) -> bool:
    from speechalign.preference_store.store import open_store

    store = open_store(cfg.store_url)
    campaign = store.campaign(name)
    return campaign is not None and any(r.number > 0 and r.status == "completed" for r in store.rounds(campaign.id))


def cmd_plan(args) -> int:
    from speechalign.plan import format_plan, plan
    from speechalign.preference_store.store import open_store

    _require_workdir(args)
    cfg = _config(args)
    store = open_store(cfg.store_url) if cfg.layout.store_db.is_file() or cfg.store.url else None
    found = plan(cfg, store)
    print(json.dumps(found, indent=2) if args.json else format_plan(found))
    return 0


def cmd_report(args) -> int:
    _require_workdir(args)
    cfg = _config(args)
    _prepare(cfg, mlflow_too=False)
    _print_report(cfg, "json" if args.json else "markdown" if args.markdown else "text")
    return 0


def cmd_listen(args) -> int:
    """main() runs this before it imports the flows: the web app needs neither Prefect nor the training stack."""
    from speechalign.listen.app import add_rater, create_app
    from speechalign.listen.items import NothingToListenTo, build_items, listening_campaign
    from speechalign.preference_store.store import open_store
    from speechalign.runtime.preflight import PreflightError

    url = f"http://{args.host}:{args.port}/"
    try:
        if not args.config:
            _require_workdir(args)
        cfg = _config(args)
        _prepare(cfg, mlflow_too=False)
        store = open_store(cfg.store_url)
        if args.add_rater is not None:
            token = add_rater(store, args.add_rater)
            print(f"rater {args.add_rater.strip()!r} added; the token, shown only this once:\n  {token}\n"
                  f"their link while `speechalign listen` runs:\n  {url}?token={token}")
            return 0
        campaign = listening_campaign(store, cfg.campaign.name)
        items = build_items(store, campaign, args.items, decode=lambda samples: _decode(cfg, store, samples))
    except (ValueError, NothingToListenTo, PreflightError) as exc:  # ValueError: ConfigError too
        print(f"speechalign: error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    print(f"listening test of campaign {campaign.name}: {items} items; raters open {url}?token=THEIR_TOKEN "
          "(`speechalign listen --add-rater NAME` makes one)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("warning: tokens and audio travel unencrypted over plain HTTP; serve it behind HTTPS", flush=True)
    uvicorn.run(create_app(store, campaign, cfg.workdir), host=args.host, port=args.port, access_log=False,
                log_level="warning")
    return 0


def cmd_policy(args) -> int:
    from pathlib import Path

    from speechalign.flows.common import ensure_campaign
    from speechalign.preference_store.store import open_store
    from speechalign.runtime.policies import rebuild_policy

    _require_workdir(args)
    cfg = _config(args)
    _prepare(cfg, mlflow_too=False)
    try:
        out = rebuild_policy(cfg, open_store(cfg.store_url), ensure_campaign(cfg), args.round, Path(args.out))
    except ValueError as exc:
        print(f"speechalign: error: {exc}", file=sys.stderr)
        return 2
    print(f"round {args.round}'s policy: {out}")
    return 0


def cmd_vllm_serve(args) -> int:
    _require_workdir(args)
    cfg = _config(args)
    _prepare(cfg, mlflow_too=False)
    from speechalign.runtime.vllm_server import serve

    serve(cfg)
    return 0


def cmd_db(args) -> int:
    from speechalign.preference_store import migrate
    from speechalign.preference_store.store import check_reachable

    cfg = _config(args)
    url = args.db or cfg.store_url
    if url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(url.removeprefix("sqlite:///")) or ".", exist_ok=True)
    try:
        check_reachable(url)
    except RuntimeError as exc:
        print(f"speechalign: error: {exc}", file=sys.stderr)
        return 2
    print(f"preference store at revision {migrate.upgrade(url)} (head {migrate.head_revision(url)})")
    return 0


def cmd_config(args) -> int:
    from speechalign.config import Config

    print(Config().to_toml() if args.defaults else _config(args).to_toml(), end="")
    return 0


def cmd_train_codec(args) -> int:
    from speechalign.models.speechtokenizer.training import train_demo_codec

    manifest = args.manifest
    if not manifest:
        from pathlib import Path

        from speechalign.bootstrap.demo_corpus import build_demo_corpus

        manifest = str(build_demo_corpus(Path(args.out) / "corpus", 800, CODEC_CORPUS_VOICES, args.seed + 1, 175))
    card = train_demo_codec(manifest, args.out, args.distill_steps, args.layer1_codes, args.seed,
                            args.decoder_steps, args.start_from)
    print(card)
    return 0


def cmd_codec_report(args) -> int:
    from speechalign.models.speechtokenizer.report import format_figures, reconstruction_figures, update_card

    _require_workdir(args)
    cfg = _config(args)
    figures = reconstruction_figures(cfg, args.limit)
    text = format_figures(figures)
    print(text)
    if args.card:
        from pathlib import Path

        update_card(Path(args.card), text, f"speechalign codec-report --workdir {args.workdir} --limit {args.limit}")
    return 0


# The shipped codec's corpus: the demo's voices and two more, other sentences than the demo's (seed + 1).
CODEC_CORPUS_VOICES = ["en-us+m3", "en-gb+f3", "en-us+f3", "en-gb+m1"]


def _decode(cfg, store, samples) -> dict[int, str]:
    """The listening page's samples that were never decoded (only here does `listen` load the codec)."""
    from speechalign.tasks.decode import decode_for_listening

    print(f"decoding {len(samples)} samples drawn for listening", flush=True)
    return decode_for_listening(cfg, store, samples)


def _require_workdir(args) -> None:
    if not args.workdir:
        from speechalign.config import ConfigError

        raise ConfigError(f"`speechalign {args.command}` needs --workdir (the directory bootstrap wrote to)")


def _prepare(cfg, mlflow_too: bool = True) -> None:
    from speechalign.runtime.preflight import prepare

    prepare(cfg, mlflow_too)


def _report(cfg) -> dict:
    from speechalign.report import campaign_report

    return campaign_report(cfg)


def _print_report(cfg, form: str = "text") -> None:
    from speechalign.report import format_markdown, format_table

    report = _report(cfg)
    print(json.dumps(report, indent=2, default=str) if form == "json"
          else format_markdown(report) if form == "markdown" else format_table(report), flush=True)


COMMANDS = {"demo": cmd_demo, "bootstrap": cmd_bootstrap, "round": cmd_round, "campaign": cmd_campaign,
            "serve": cmd_serve, "report": cmd_report, "listen": cmd_listen, "ablate": cmd_ablate,
            "policy": cmd_policy, "plan": cmd_plan, "vllm-serve": cmd_vllm_serve, "db": cmd_db, "config": cmd_config,
            "train-codec": cmd_train_codec,
            "codec-report": cmd_codec_report}

if __name__ == "__main__":
    sys.exit(main())
