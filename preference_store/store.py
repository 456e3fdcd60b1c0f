"""The preference store's API: the only code that writes SQL.

Every write is an insert-or-ignore on a table's unique key, so a stage that is retried or resumed
after a crash writes nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import create_engine, delete, event, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from speechalign.preference_store.schema import (
    Campaign,
    CeilingScore,
    Checkpoint,
    ImportIssue,
    Pair,
    Prompt,
    Round,
    RoundDecision,
    RoundStage,
    Sample,
    Score,
    utcnow,
)

BATCH = 500


class StoreUnreachable(RuntimeError):
    pass


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL lets readers (report, UI) run beside a round
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        return engine
    connect_args = {"connect_timeout": 10} if url.startswith("postgresql") else {}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def check_reachable(url: str) -> None:
    """Connect once, so a wrong URL fails before any work with a message that says what to fix."""
    try:
        engine = make_engine(url)
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any driver error means the same thing to the user
        raise StoreUnreachable(
            f"cannot reach the preference store at {redact(url)}: "
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}. "
            "Fix [store] url in the config (or --db): for SQLite its directory must exist and be writable; "
            "for PostgreSQL the server must be running and the database created."
        ) from exc


def redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url


def insert_ignore(session: Session, model, rows: list[dict], keys: list[str]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on `keys`, in batches, for SQLite and PostgreSQL."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(dialect)
    if insert is None:
        raise NotImplementedError(f"the preference store supports SQLite and PostgreSQL, not {dialect}")
    for start in range(0, len(rows), BATCH):
        stmt = insert(model).values(rows[start:start + BATCH]).on_conflict_do_nothing(index_elements=keys)
        session.execute(stmt)


@lru_cache(maxsize=8)
def open_store(url: str) -> PreferenceStore:
    """The store at `url`, one engine per process and URL."""
    return PreferenceStore(url)


class PreferenceStore:
    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    # ---- corpus -------------------------------------------------------------------------------
    def add_prompts(self, rows: list[dict]) -> None:
        with self.session() as s:
            insert_ignore(s, Prompt, rows, ["utterance_id"])

    def add_import_issues(self, rows: list[dict]) -> None:
        with self.session() as s:
            insert_ignore(s, ImportIssue, rows, ["manifest", "line", "action"])

    def import_issues(self) -> list[ImportIssue]:
        with self.session() as s:
            return list(s.scalars(select(ImportIssue).order_by(ImportIssue.manifest, ImportIssue.line)))

    def prompts(self, split: str | None = None) -> list[Prompt]:
        with self.session() as s:
            q = select(Prompt).order_by(Prompt.id)
            if split:
                q = q.where(Prompt.split == split)
            return list(s.scalars(q))

    def known_utterances(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(Prompt.utterance_id)))

    # ---- campaigns and rounds -----------------------------------------------------------------
    def campaign(self, name: str) -> Campaign | None:
        with self.session() as s:
            return s.scalar(select(Campaign).where(Campaign.name == name))

    def campaigns(self) -> list[Campaign]:
        with self.session() as s:
            return list(s.scalars(select(Campaign).order_by(Campaign.id)))

    def create_campaign(self, name: str, config: dict, base_model_path: str) -> Campaign:
        with self.session() as s:
            insert_ignore(s, Campaign, [{"name": name, "config": config, "base_model_path": base_model_path,
                                         "created_at": utcnow()}], ["name"])
        return self.campaign(name)  # type: ignore[return-value]

    def set_campaign_mlflow(self, campaign_id: int, experiment_id: str, parent_run_id: str) -> None:
        with self.session() as s:
            s.execute(update(Campaign).where(Campaign.id == campaign_id).values(
                mlflow_experiment_id=experiment_id, mlflow_parent_run_id=parent_run_id))

    def rounds(self, campaign_id: int) -> list[Round]:
        with self.session() as s:
            return list(s.scalars(select(Round).where(Round.campaign_id == campaign_id).order_by(Round.number)))

    def round_number(self, campaign_id: int, number: int) -> Round | None:
        """Round `number` of a campaign (0 is the base model's evaluation), or None."""
        with self.session() as s:
            return s.scalar(select(Round).where(Round.campaign_id == campaign_id, Round.number == number))

    def round(self, round_id: int) -> Round:
        with self.session() as s:
            return s.get_one(Round, round_id)

    def open_round(self, campaign_id: int, number: int, policy_in: str) -> Round:
        """The round's row, created on first call; a rerun finds the same row (and resumes it)."""
        with self.session() as s:
            insert_ignore(s, Round, [{"campaign_id": campaign_id, "number": number, "policy_in": policy_in,
                                      "status": "running", "started_at": utcnow()}], ["campaign_id", "number"])
            s.execute(update(Round).where(Round.campaign_id == campaign_id, Round.number == number,
                                          Round.status != "completed").values(status="running", error=None))
            return s.scalar(select(Round).where(Round.campaign_id == campaign_id, Round.number == number))

    def finish_round(self, round_id: int, status: str, policy_out: str | None = None, error: str | None = None) -> None:
        values: dict = {"status": status, "error": error, "finished_at": utcnow()}
        if policy_out:
            values["policy_out"] = policy_out
        with self.session() as s:
            s.execute(update(Round).where(Round.id == round_id).values(**values))

    def set_round_mlflow_run(self, round_id: int, run_id: str) -> None:
        with self.session() as s:
            s.execute(update(Round).where(Round.id == round_id).values(mlflow_run_id=run_id))

    def copy_round(self, source_id: int, campaign_id: int, stages: tuple[str, ...]) -> Round:
        """Another campaign's round, copied into `campaign_id` under the same number: the round, its samples and
        their scores (under new ids; the files are shared), and the named stages' records. For a round that is
        the same whichever campaign runs it (round 0 of campaigns from one base model, with one evaluation)."""
        with self.session() as s:
            source = s.get_one(Round, source_id)
            copy = Round(campaign_id=campaign_id, number=source.number, status=source.status,
                         policy_in=source.policy_in, policy_out=source.policy_out, started_at=source.started_at,
                         finished_at=source.finished_at)
            s.add(copy)
            s.flush()
            ids = {}
            for sample in s.scalars(select(Sample).where(Sample.round_id == source_id)):
                new = Sample(**{c: getattr(sample, c) for c in ("prompt_id", "kind", "k", "tokens", "finished", "seed",
                                                                "sampling", "audio_path", "created_at")},
                             round_id=copy.id)
                s.add(new)
                s.flush()
                ids[sample.id] = new.id
            rows = s.execute(select(Score.sample_id, Score.metric, Score.value, Score.error).where(
                Score.sample_id.in_(ids))).all() if ids else []
            insert_ignore(s, Score, [{"sample_id": ids[i], "metric": m, "value": v, "error": e} for i, m, v, e in rows],
                          ["sample_id", "metric"])
            for st in s.scalars(select(RoundStage).where(RoundStage.round_id == source_id,
                                                         RoundStage.stage.in_(stages))):
                s.add(RoundStage(round_id=copy.id, **{c: getattr(st, c) for c in (
                    "stage", "status", "attempts", "started_at", "finished_at", "seconds", "result", "error")}))
            return copy

    # ---- stages -------------------------------------------------------------------------------
    def stages(self, round_id: int) -> dict[str, RoundStage]:
        with self.session() as s:
            return {st.stage: st for st in s.scalars(select(RoundStage).where(RoundStage.round_id == round_id))}

    def stage_started(self, round_id: int, stage: str) -> None:
        with self.session() as s:
            insert_ignore(s, RoundStage, [{"round_id": round_id, "stage": stage, "status": "running",
                                           "attempts": 0, "started_at": utcnow()}], ["round_id", "stage"])
            s.execute(update(RoundStage).where(RoundStage.round_id == round_id, RoundStage.stage == stage).values(
                status="running", error=None, attempts=RoundStage.attempts + 1, started_at=utcnow()))

    def stage_completed(self, round_id: int, stage: str, result: dict, seconds: float) -> None:
        with self.session() as s:
            s.execute(update(RoundStage).where(RoundStage.round_id == round_id, RoundStage.stage == stage).values(
                status="completed", result=result, seconds=seconds, finished_at=utcnow(), error=None))

    def stage_failed(self, round_id: int, stage: str, error: str) -> None:
        with self.session() as s:
            s.execute(update(RoundStage).where(RoundStage.round_id == round_id, RoundStage.stage == stage).values(
                status="failed", error=error, finished_at=utcnow()))

    # ---- samples, scores, pairs ---------------------------------------------------------------
    def add_samples(self, rows: list[dict]) -> None:
        now = utcnow()
        with self.session() as s:
            insert_ignore(s, Sample, [{"created_at": now, **r} for r in rows], ["round_id", "prompt_id", "kind", "k"])

    def samples(self, round_id: int, kind: str | None = None) -> list[Sample]:
        with self.session() as s:
            q = select(Sample).where(Sample.round_id == round_id).order_by(Sample.prompt_id, Sample.kind, Sample.k)
            if kind:
                q = q.where(Sample.kind == kind)
            return list(s.scalars(q))

    def samples_by_id(self, ids: Iterable[int]) -> dict[int, Sample]:
        """{id: sample} of any rounds (a round's human pairs name samples of earlier rounds)."""
        wanted = sorted(set(ids))
        with self.session() as s:
            return {x.id: x for part in chunks(wanted, BATCH)
                    for x in s.scalars(select(Sample).where(Sample.id.in_(part)))}

    def set_audio_paths(self, paths: dict[int, str]) -> None:
        """Record where each sample's decoded WAV is (sample id -> path)."""
        with self.session() as s:
            for sample_id, path in paths.items():
                s.execute(update(Sample).where(Sample.id == sample_id).values(audio_path=path))

    def count_samples(self, round_id: int, kind: str) -> int:
        return self.count(Sample, round_id=round_id, kind=kind)

    def delete_samples(self, round_id: int, kind: str, min_k: int = 0) -> list[str]:
        """Delete the round's `kind` samples whose index is `min_k` or more, with their scores; the audio paths they
        had (the caller deletes the files)."""
        with self.session() as s:
            where = (Sample.round_id == round_id, Sample.kind == kind, Sample.k >= min_k)
            gone = s.execute(select(Sample.id, Sample.audio_path).where(*where)).all()
            ids = [i for i, _ in gone]
            for part in chunks(ids, BATCH):
                s.execute(delete(Score).where(Score.sample_id.in_(part)))
                s.execute(delete(Sample).where(Sample.id.in_(part)))
            return [path for _, path in gone if path]

    def existing_sample_keys(self, round_id: int, kind: str) -> set[tuple[int, int]]:
        with self.session() as s:
            rows = s.execute(select(Sample.prompt_id, Sample.k).where(Sample.round_id == round_id, Sample.kind == kind))
            return {(p, k) for p, k in rows}

    def add_scores(self, rows: list[dict]) -> None:
        with self.session() as s:
            insert_ignore(s, Score, rows, ["sample_id", "metric"])

    def scores(self, round_id: int, kind: str | None = None) -> dict[int, dict[str, float | None]]:
        """{sample_id: {metric: value}} for a round's samples (value None where the metric failed)."""
        with self.session() as s:
            q = select(Score.sample_id, Score.metric, Score.value).join(Sample, Sample.id == Score.sample_id).where(
                Sample.round_id == round_id)
            if kind:
                q = q.where(Sample.kind == kind)
            out: dict[int, dict[str, float | None]] = {}
            for sample_id, metric, value in s.execute(q):
                out.setdefault(sample_id, {})[metric] = value
            return out

    def add_ceiling_scores(self, rows: list[dict]) -> None:
        with self.session() as s:
            insert_ignore(s, CeilingScore, rows, ["prompt_id", "kind", "metric", "scoring"])

    def ceiling_scores(self, scoring: str) -> dict[tuple[str, int], dict[str, float | None]]:
        """{(kind, prompt_id): {metric: value}} of one scoring setup's ceiling (value None where it failed)."""
        with self.session() as s:
            q = select(CeilingScore.kind, CeilingScore.prompt_id, CeilingScore.metric, CeilingScore.value).where(
                CeilingScore.scoring == scoring)
            out: dict[tuple[str, int], dict[str, float | None]] = {}
            for kind, prompt_id, metric, value in s.execute(q):
                out.setdefault((kind, prompt_id), {})[metric] = value
            return out

    def add_pairs(self, rows: list[dict]) -> None:
        now = utcnow()
        with self.session() as s:
            insert_ignore(s, Pair, [{"created_at": now, **r} for r in rows],
                          ["round_id", "chosen_sample_id", "rejected_sample_id", "criterion"])

    def count_pairs(self, round_id: int, criterion: str) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(Pair).where(
                Pair.round_id == round_id, Pair.criterion == criterion)) or 0)

    def pairs(self, round_id: int) -> list[Pair]:
        with self.session() as s:
            return list(s.scalars(select(Pair).where(Pair.round_id == round_id).order_by(Pair.id)))

    def count(self, model, **where) -> int:
        with self.session() as s:
            q = select(func.count()).select_from(model)
            for col, value in where.items():
                q = q.where(getattr(model, col) == value)
            return int(s.scalar(q) or 0)

    # ---- checkpoints --------------------------------------------------------------------------
    def add_checkpoint(self, row: dict) -> None:
        with self.session() as s:
            insert_ignore(s, Checkpoint, [{"created_at": utcnow(), **row}], ["round_id"])

    def checkpoint(self, round_id: int) -> Checkpoint | None:
        with self.session() as s:
            return s.scalar(select(Checkpoint).where(Checkpoint.round_id == round_id))

    def set_promoted(self, round_id: int) -> None:
        with self.session() as s:
            s.execute(update(Checkpoint).where(Checkpoint.round_id == round_id).values(promoted=True))

    def champion(self, campaign_id: int) -> tuple[Round, Checkpoint] | None:
        """The campaign's latest promoted round and its checkpoint (None: the base model is the champion)."""
        with self.session() as s:
            row = s.execute(select(Round, Checkpoint).join(Checkpoint, Checkpoint.round_id == Round.id).where(
                Round.campaign_id == campaign_id, Checkpoint.promoted.is_(True)).order_by(Round.number.desc())).first()
            return (row[0], row[1]) if row else None

    # ---- guard and promotion decisions --------------------------------------------------------
    def add_decision(self, round_id: int, kind: str, verdict: str, reasons: list[str], details: dict) -> None:
        """Recorded once per round and kind: a resumed stage keeps the first decision."""
        with self.session() as s:
            insert_ignore(s, RoundDecision, [{"round_id": round_id, "kind": kind, "verdict": verdict,
                                              "reasons": reasons, "details": details, "created_at": utcnow()}],
                          ["round_id", "kind"])

    def decisions(self, round_id: int) -> dict[str, RoundDecision]:
        with self.session() as s:
            return {d.kind: d for d in s.scalars(select(RoundDecision).where(RoundDecision.round_id == round_id))}



def chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
