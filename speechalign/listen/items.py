"""What raters listen to: pairs of clips of the same sentence, drawn from the store.

Comparisons (the subject side first):
- round_vs_previous: round r's held-out sample vs round r-1's, same prompt and sample index (same seed),
  when their tokens differ (identical clips are no question);
- aligned_vs_base: the last round's held-out sample vs the base model's (round 0), when it is not round 1;
- golden_vs_synthetic: a round's golden tokens vs one of its candidates that differs from them;
- criterion: the automatic criterion's chosen sample vs its rejected one (a round's auto pairs; under
  golden_vs_synthetic those are the golden_vs_synthetic items, which then carry the pair).

A seeded subset of at most `per_round` items per comparison and round is drawn (a larger `per_round`
later adds items; the ones drawn before stay). The subject's side (A or B) is drawn per item and
stored, and items are heard in a seeded shuffled order, the same for every rater, so raters overlap.
Held-out samples are always decoded; a round's golden and candidate samples are decoded only when a
metric listened to them, so `build_items` decodes the ones it draws (`decode`), and only those.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from speechalign.preference_store import judgments
from speechalign.preference_store.schema import Campaign, Round, Sample
from speechalign.preference_store.store import PreferenceStore
from speechalign.runtime.seeds import derive_seed

COMPARISONS = ("round_vs_previous", "aligned_vs_base", "golden_vs_synthetic", "criterion")
Candidate = tuple[Sample, Sample, int | None]  # subject, reference, automatic pair id


class NothingToListenTo(RuntimeError):
    pass


def heldout_pairs(store: PreferenceStore, newer: Round, older: Round) -> list[Candidate]:
    before = {(s.prompt_id, s.k): s for s in store.samples(older.id, "heldout") if s.audio_path}
    return [(s, before[(s.prompt_id, s.k)], None) for s in store.samples(newer.id, "heldout")
            if s.audio_path and (s.prompt_id, s.k) in before and s.tokens != before[(s.prompt_id, s.k)].tokens]


def golden_pairs(store: PreferenceStore, rnd: Round) -> list[Candidate]:
    samples = store.samples(rnd.id)
    auto = {(p.chosen_sample_id, p.rejected_sample_id): p.id for p in store.pairs(rnd.id) if p.source == "auto"}
    golden = {s.prompt_id: s for s in samples if s.kind == "golden"}
    return [(golden[c.prompt_id], c, auto.get((golden[c.prompt_id].id, c.id))) for c in samples
            if c.kind == "candidate" and c.prompt_id in golden and c.tokens != golden[c.prompt_id].tokens]


def criterion_pairs(store: PreferenceStore, rnd: Round) -> list[Candidate]:
    samples = {s.id: s for s in store.samples(rnd.id)}
    return [(samples[p.chosen_sample_id], samples[p.rejected_sample_id], p.id) for p in store.pairs(rnd.id)
            if p.source == "auto" and p.criterion != "golden_vs_synthetic"  # those are golden_vs_synthetic items
            and p.chosen_sample_id in samples and p.rejected_sample_id in samples]


def candidates(store: PreferenceStore, campaign: Campaign) -> dict[tuple[str, Round], list[Candidate]]:
    done = [r for r in store.rounds(campaign.id) if r.status == "completed"]
    out: dict[tuple[str, Round], list[Candidate]] = {}
    for older, newer in zip(done, done[1:]):
        if newer.number == older.number + 1:
            out[("round_vs_previous", newer)] = heldout_pairs(store, newer, older)
    if done and done[0].number == 0 and done[-1].number > 1:
        out[("aligned_vs_base", done[-1])] = heldout_pairs(store, done[-1], done[0])
    for rnd in done:
        if rnd.number > 0:
            out[("golden_vs_synthetic", rnd)] = golden_pairs(store, rnd)
            out[("criterion", rnd)] = criterion_pairs(store, rnd)
    return out


def listening_campaign(store: PreferenceStore, name: str) -> Campaign:
    campaign = store.campaign(name)
    if campaign is None:
        raise NothingToListenTo(f"no campaign {name!r} in the preference store; run `speechalign bootstrap` and "
                                "`speechalign round` on this work directory first, or name yours with "
                                "--set campaign.name=NAME")
    return campaign


def build_items(store: PreferenceStore, campaign: Campaign, per_round: int,
                decode: Callable[[list[Sample]], dict[int, str]] | None = None) -> int:
    """Add the campaign's listening items (insert-or-ignore); return how many it has. `decode` makes WAVs of
    drawn samples that have none (returning their paths); without it, such samples are not drawn."""
    if per_round < 1:
        raise ValueError(f"--items {per_round}: give at least 1 item per comparison and round")
    drawn = {}
    for (comparison, rnd), found in candidates(store, campaign).items():
        rng = random.Random(derive_seed("listen", campaign.name, comparison, rnd.number))
        rng.shuffle(found)
        if decode is None:
            found = [(a, b, pair) for a, b, pair in found if a.audio_path and b.audio_path]
        drawn[(comparison, rnd)] = (found[:per_round], rng)
    silent = {s.id: s for chosen, _ in drawn.values() for pair in chosen for s in pair[:2] if not s.audio_path}
    audio = decode(list(silent.values())) if silent and decode else {}
    rows = []
    for (comparison, rnd), (chosen, rng) in drawn.items():
        for subject, reference, pair_id in chosen:
            if not all(s.audio_path or s.id in audio for s in (subject, reference)):
                continue  # could not be decoded (the decode stage's log says why)
            rows.append({"campaign_id": campaign.id, "round_id": rnd.id, "comparison": comparison,
                         "prompt_id": subject.prompt_id, "subject_sample_id": subject.id,
                         "reference_sample_id": reference.id, "subject_on": rng.choice("AB"), "pair_id": pair_id,
                         "position": derive_seed("listen-order", campaign.name, subject.id, reference.id)})
    judgments.add_items(store, rows)  # a pair of samples met twice (e.g. golden_vs_synthetic pairs) is kept once
    total = judgments.count_items(store, campaign.id)
    if total == 0:
        raise NothingToListenTo(
            f"campaign {campaign.name!r} has nothing to listen to yet: items need a completed round after round 0 "
            "with decoded audio (held-out, golden and candidate samples); run `speechalign round` first")
    return total
