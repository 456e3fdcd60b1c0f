"""The listening test's part of the store: raters, listening items and human judgments.

Like the rest of the store, every write is an insert-or-ignore on a unique key: building the items
again adds only new ones (a side, once drawn, stays), and a judgment posted twice is kept once.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from speechalign.preference_store.schema import Judgment, ListeningItem, Prompt, Rater, Round, Sample, utcnow
from speechalign.preference_store.store import PreferenceStore, insert_ignore

CHOICES = ("A", "B", "tie")


class RaterExists(ValueError):
    pass


@dataclass(frozen=True)
class JudgedItem:
    """A judgment as the report and the pairs stage read it: which side of the comparison won."""

    item_id: int
    comparison: str
    round_number: int
    rater: str
    outcome: str  # subject | reference | tie
    subject_sample_id: int
    reference_sample_id: int
    prompt_id: int
    auto_pair: bool  # the item is one of the automatic criterion's pairs (subject = its chosen sample)
    trainable: bool  # both samples are golden/candidate samples of train-split prompts (never held out)


def add_rater(store: PreferenceStore, name: str, token_hash: str) -> Rater:
    with store.session() as s:
        if s.scalar(select(Rater).where(Rater.name == name)) is not None:
            raise RaterExists(f"rater {name!r} already exists; give the new rater another name "
                              "(a rater who lost the token can be added again under a new name)")
        rater = Rater(name=name, token_hash=token_hash, created_at=utcnow())
        s.add(rater)
    return rater


def rater_by_token_hash(store: PreferenceStore, token_hash: str) -> Rater | None:
    with store.session() as s:
        return s.scalar(select(Rater).where(Rater.token_hash == token_hash))


def add_items(store: PreferenceStore, rows: list[dict]) -> None:
    now = utcnow()
    with store.session() as s:
        insert_ignore(s, ListeningItem, [{"created_at": now, **r} for r in rows],
                      ["subject_sample_id", "reference_sample_id"])


def count_items(store: PreferenceStore, campaign_id: int) -> int:
    return store.count(ListeningItem, campaign_id=campaign_id)


def progress(store: PreferenceStore, campaign_id: int, rater_id: int) -> tuple[int, int]:
    """(items this rater judged, items of the campaign)."""
    with store.session() as s:
        judged = s.scalar(select(func.count()).select_from(Judgment).join(ListeningItem).where(
            Judgment.rater_id == rater_id, ListeningItem.campaign_id == campaign_id))
    return int(judged or 0), count_items(store, campaign_id)


def next_item(store: PreferenceStore, campaign_id: int, rater_id: int) -> tuple[ListeningItem, str] | None:
    """The first item (by position) this rater has not judged, with its sentence; None when all are judged."""
    with store.session() as s:
        judged = select(Judgment.item_id).where(Judgment.rater_id == rater_id)
        row = s.execute(select(ListeningItem, Prompt.text).join(Prompt, Prompt.id == ListeningItem.prompt_id).where(
            ListeningItem.campaign_id == campaign_id, ListeningItem.id.not_in(judged)).order_by(
            ListeningItem.position, ListeningItem.id).limit(1)).first()
    return (row[0], row[1]) if row else None


def item(store: PreferenceStore, campaign_id: int, item_id: int) -> ListeningItem | None:
    with store.session() as s:
        found = s.get(ListeningItem, item_id)
    return found if found is not None and found.campaign_id == campaign_id else None


def side_sample(found: ListeningItem, side: str) -> int:
    """The sample played on `side` (A or B) of an item."""
    return found.subject_sample_id if side == found.subject_on else found.reference_sample_id


def audio_path(store: PreferenceStore, sample_id: int) -> str | None:
    with store.session() as s:
        return s.scalar(select(Sample.audio_path).where(Sample.id == sample_id))


def add_judgment(store: PreferenceStore, found: ListeningItem, rater_id: int, choice: str) -> None:
    """Record a rater's answer; a second answer on the same item (a double click, a resent request) is ignored."""
    if choice not in CHOICES:
        raise ValueError(f"choice {choice!r}: it can be {', '.join(CHOICES)}")
    winner = None if choice == "tie" else side_sample(found, choice)
    with store.session() as s:
        insert_ignore(s, Judgment, [{"item_id": found.id, "rater_id": rater_id, "choice": choice,
                                     "winner_sample_id": winner, "created_at": utcnow()}], ["item_id", "rater_id"])


def judged_items(store: PreferenceStore, campaign_id: int) -> list[JudgedItem]:
    """Every judgment on the campaign's items, as outcomes of their comparison."""
    subject, reference = aliased(Sample), aliased(Sample)
    with store.session() as s:
        rows = s.execute(
            select(ListeningItem, Judgment, Rater.name, Round.number, Prompt.split, subject.kind, reference.kind)
            .join(Judgment, Judgment.item_id == ListeningItem.id).join(Rater, Rater.id == Judgment.rater_id)
            .join(Round, Round.id == ListeningItem.round_id).join(Prompt, Prompt.id == ListeningItem.prompt_id)
            .join(subject, subject.id == ListeningItem.subject_sample_id)
            .join(reference, reference.id == ListeningItem.reference_sample_id)
            .where(ListeningItem.campaign_id == campaign_id).order_by(Judgment.id))
        return [JudgedItem(
            item_id=it.id, comparison=it.comparison, round_number=number, rater=rater, prompt_id=it.prompt_id,
            outcome="tie" if j.winner_sample_id is None else
            "subject" if j.winner_sample_id == it.subject_sample_id else "reference",
            subject_sample_id=it.subject_sample_id, reference_sample_id=it.reference_sample_id,
            auto_pair=it.pair_id is not None,
            trainable=split == "train" and {kind_s, kind_r} <= {"golden", "candidate"},
        ) for it, j, rater, number, split, kind_s, kind_r in rows]

