"""The preference store's tables (SQLAlchemy 2). Alembic migrations in `migrations/` create them.

Uniqueness is the store's exactly-once guarantee: every stage writes with insert-or-ignore on
these keys, so a retried or resumed stage never writes a row twice.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSONType, list: JSONType, datetime: DateTime(timezone=True)}


class Prompt(Base):
    """One utterance of the corpus: its text, its real recording and the golden codec tokens of it."""

    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(primary_key=True)
    utterance_id: Mapped[str] = mapped_column(String(200), unique=True)
    text: Mapped[str] = mapped_column(Text)
    speaker: Mapped[str | None] = mapped_column(String(200))
    golden_audio_path: Mapped[str] = mapped_column(Text)
    golden_tokens: Mapped[list] = mapped_column(comment="all RVQ layers, [layer][frame]")
    num_frames: Mapped[int] = mapped_column(Integer)
    duration_s: Mapped[float] = mapped_column(Float)
    split: Mapped[str] = mapped_column(String(16), index=True, comment="train | sft | heldout")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImportIssue(Base):
    """A manifest row that was skipped or repaired on import, with what was wrong."""

    __tablename__ = "import_issues"
    __table_args__ = (UniqueConstraint("manifest", "line", "action"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    manifest: Mapped[str] = mapped_column(Text)
    line: Mapped[int] = mapped_column(Integer)
    utterance_id: Mapped[str | None] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(16), comment="skipped | resampled | downmixed")
    problem: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Campaign(Base):
    __tablename__ = "campaigns"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    config: Mapped[dict]
    base_model_path: Mapped[str] = mapped_column(Text)
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_parent_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Round(Base):
    """Round 0 of a campaign evaluates the base model; rounds 1..N each align the previous policy."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("campaign_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running", comment="running | completed | failed")
    policy_in: Mapped[str] = mapped_column(Text, comment="policy that generated this round's samples")
    policy_out: Mapped[str | None] = mapped_column(Text, comment="merged policy after DPO")
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class RoundStage(Base):
    """Progress of one stage of one round: what makes a round resumable."""

    __tablename__ = "round_stages"
    __table_args__ = (UniqueConstraint("round_id", "stage"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), comment="running | completed | failed")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    seconds: Mapped[float | None] = mapped_column(Float)
    result: Mapped[dict | None]
    error: Mapped[str | None] = mapped_column(Text)


class Sample(Base):
    """A codec-token sequence for a prompt in a round: the golden one, a candidate, or a held-out evaluation."""

    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("round_id", "prompt_id", "kind", "k"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), comment="golden | candidate | heldout")
    k: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[list] = mapped_column(comment="layer-1 codec units")
    finished: Mapped[bool] = mapped_column(Boolean, comment="ended with <eosp> before the length limit")
    seed: Mapped[int | None] = mapped_column(Integer)
    sampling: Mapped[dict | None]
    audio_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (UniqueConstraint("sample_id", "metric"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text, comment="why the metric failed on this sample")


class CeilingScore(Base):
    """The ceiling of a work directory's held-out prompts (bootstrap/ceiling.py): each recording as it is, and its
    golden tokens decoded, scored once per scoring setup (`scoring`: a fingerprint of the plug-ins, their
    options and the decoding path) and shared by every campaign on the corpus."""
    __tablename__ = "ceiling_scores"
    __table_args__ = (UniqueConstraint("prompt_id", "kind", "metric", "scoring"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), comment="recording | golden_tokens")
    metric: Mapped[str] = mapped_column(String(64))
    scoring: Mapped[str] = mapped_column(String(64), comment="sha256 of the metric plug-ins, options and decoding")
    value: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text, comment="why the metric failed on this item")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Pair(Base):
    __tablename__ = "pairs"
    __table_args__ = (UniqueConstraint("round_id", "chosen_sample_id", "rejected_sample_id", "criterion"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    chosen_sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"))
    rejected_sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"))
    criterion: Mapped[str] = mapped_column(String(64))
    margins: Mapped[dict | None]
    source: Mapped[str] = mapped_column(String(16), default="auto", comment="auto | human")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), unique=True)
    path: Mapped[str] = mapped_column(Text)
    mlflow_model_name: Mapped[str] = mapped_column(String(200))
    mlflow_version: Mapped[str] = mapped_column(String(32))
    parent_version: Mapped[str | None] = mapped_column(String(32), comment="version of the round before; NULL: base")
    metrics: Mapped[dict | None]
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RoundDecision(Base):
    """What the collapse guard and the promotion gate decided about a round, and why."""

    __tablename__ = "round_decisions"
    __table_args__ = (UniqueConstraint("round_id", "kind"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), comment="guard | promotion")
    verdict: Mapped[str] = mapped_column(String(32), comment="guard: ok | flagged; promotion: promoted | refused | off")
    reasons: Mapped[list] = mapped_column(comment="one sentence per reason; empty when nothing was wrong")
    details: Mapped[dict | None] = mapped_column(comment="the figures the decision was made on")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RoundLock(Base):
    """Who is running a round of a campaign now: at most one holder per campaign.

    The holder names its host and process, and refreshes `heartbeat_at` while it works. A lock whose
    process is gone (same host) or whose heartbeat is stale (any host) may be taken over, so a
    killed run never blocks the campaign.
    """

    __tablename__ = "round_locks"
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), comment="random token of the holding run")
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class Rater(Base):
    """A listener of the A/B listening test (`speechalign listen --add-rater NAME`); only a hash of the token
    is kept."""

    __tablename__ = "raters"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, comment="sha256 hex of the rater's token")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ListeningItem(Base):
    """Two clips of the same sentence that raters compare, with the side each is played on.

    `subject` is the side a comparison asks about (round r, the aligned model, the golden tokens, the
    automatic criterion's chosen sample); `reference` the other (round r-1, the base model, a synthetic
    candidate, the rejected sample). The rater hears them as A and B, `subject_on` says which is which.
    """

    __tablename__ = "listening_items"
    __table_args__ = (UniqueConstraint("subject_sample_id", "reference_sample_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), comment="the round of the subject sample")
    comparison: Mapped[str] = mapped_column(
        String(32), comment="round_vs_previous | aligned_vs_base | golden_vs_synthetic | criterion")
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    subject_sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"))
    reference_sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"))
    subject_on: Mapped[str] = mapped_column(String(1), comment="A | B: the side the subject sample is played on")
    pair_id: Mapped[int | None] = mapped_column(ForeignKey("pairs.id"), comment="the automatic pair it is, if any")
    position: Mapped[int] = mapped_column(Integer, comment="raters hear items in this (seeded, shuffled) order")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Judgment(Base):
    """One rater's answer on one listening item: A, B or tie."""

    __tablename__ = "judgments"
    __table_args__ = (UniqueConstraint("item_id", "rater_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("listening_items.id"), index=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), index=True)
    choice: Mapped[str] = mapped_column(String(8), comment="A | B | tie, as the rater answered")
    winner_sample_id: Mapped[int | None] = mapped_column(ForeignKey("samples.id"), comment="NULL on a tie")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
