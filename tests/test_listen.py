"""The A/B listening test: raters and tokens, the page in a real headless Chromium against the real server,
judgments in the store across a restart, refused requests, the report's figures, and human pairs in DPO data.

The store holds a small campaign made on the spot (rounds 0-2, held-out, golden and candidate samples, auto
pairs) whose samples' audio is real espeak-ng speech: the language model itself is not needed here.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf

from speechalign.bootstrap.demo_corpus import speak
from speechalign.cli import main
from speechalign.listen.figures import listening_figures, wilson
from speechalign.listen.items import build_items
from speechalign.preference_store import judgments
from speechalign.preference_store.schema import Judgment, ListeningItem, Pair
from speechalign.preference_store.store import open_store
from speechalign.report import campaign_report, format_table
from speechalign.runtime.context import RoundContext
from speechalign.runtime.results import Scores
from speechalign.tasks.pairs import build_pairs
from tests.conftest import database_url
from tests.servers import chromium, free_port, running_server

HELDOUT = ["Bring the red box.", "Open the green window."]
TRAIN = ["The baker sold a lamp.", "My uncle fixed the clock."]
VOICES = ["en-us+m3", "en-gb+f3", "en-us+f3"]


class Campaign:
    """A work directory whose store holds campaign `demo`: rounds 0-2 completed, every sample with espeak audio."""

    def __init__(self, workdir: Path, store_url: str):
        from speechalign.config import load_config, save_config
        from speechalign.runtime.preflight import prepare

        self.cfg = load_config(overrides=[f'store.url="{store_url}"'], workdir=str(workdir))
        save_config(self.cfg)
        prepare(self.cfg, mlflow_too=False)
        self.store = open_store(self.cfg.store_url)
        self.clips: dict[tuple, str] = {}
        self.store.add_prompts([{"utterance_id": f"{split}-{i}", "text": text, "speaker": "en-us+m3",
                                 "golden_audio_path": "/corpus/x.wav", "golden_tokens": [[1, 2, 3]], "num_frames": 3,
                                 "duration_s": 1.0, "split": split}
                                for split, texts in (("heldout", HELDOUT), ("train", TRAIN))
                                for i, text in enumerate(texts)])
        self.prompts = {p.text: p for p in self.store.prompts()}
        self.text = {p.id: p.text for p in self.prompts.values()}
        self.campaign = self.store.create_campaign("demo", self.cfg.to_dict(), "/base")
        self.rounds = [self.add_round(n) for n in range(3)]

    def clip(self, text: str, voice: str, speed: int) -> str:
        """A WAV of `text` under the campaign's directory (one file per text, voice and speed)."""
        key = (text, voice, speed)
        if key not in self.clips:
            path = self.cfg.layout.campaign_dir / "audio" / f"{len(self.clips):03d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, speak(text, voice, speed, 16000), 16000, subtype="PCM_16")
            self.clips[key] = str(path)
        return self.clips[key]

    def add_round(self, number: int):
        rnd = self.store.open_round(self.campaign.id, number, f"/policy-{number}")
        rows = [self.sample(rnd.id, HELDOUT[i], "heldout", 0, [number, i], VOICES[number], 150 + 30 * number)
                for i in range(len(HELDOUT))]
        if number > 0:
            for text in TRAIN:
                rows.append(self.sample(rnd.id, text, "golden", 0, [1, 2, 3], VOICES[0], 175))
                rows += [self.sample(rnd.id, text, "candidate", k, [number, k], VOICES[k + 1], 220) for k in range(2)]
        self.store.add_samples(rows)
        samples = self.store.samples(rnd.id)
        golden = {s.prompt_id: s for s in samples if s.kind == "golden"}
        self.store.add_pairs([{"round_id": rnd.id, "prompt_id": s.prompt_id, "chosen_sample_id": golden[s.prompt_id].id,
                               "rejected_sample_id": s.id, "criterion": "golden_vs_synthetic", "source": "auto"}
                              for s in samples if s.kind == "candidate"])
        self.store.finish_round(rnd.id, "completed", policy_out=f"/policy-{number + 1}")
        return rnd

    def sample(self, round_id, text, kind, k, tokens, voice, speed) -> dict:
        return {"round_id": round_id, "prompt_id": self.prompts[text].id, "kind": kind, "k": k, "tokens": tokens,
                "finished": True, "seed": k, "audio_path": self.clip(text, voice, speed)}

    def items(self) -> list[ListeningItem]:
        with self.store.session() as s:
            return list(s.query(ListeningItem).order_by(ListeningItem.position, ListeningItem.id))

    def judgments(self) -> list[Judgment]:
        with self.store.session() as s:
            return list(s.query(Judgment).order_by(Judgment.id))


def add_rater(workdir: Path, name: str, capsys) -> str:
    assert main(["listen", "--workdir", str(workdir), "--add-rater", name]) == 0
    out = capsys.readouterr().out
    return re.search(r"\?token=(\S+)", out).group(1)


def get(url: str, token: str | None = None, data: dict | None = None) -> tuple[int, bytes, str]:
    request = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None,
                                     headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("content-type", "")


@pytest.fixture
def campaign(tmp_path, store_url) -> Campaign:
    return Campaign(tmp_path / "work", store_url)


def listen_server(workdir: Path, port: int, log: Path):
    return running_server([sys.executable, "-m", "speechalign.cli", "listen", "--workdir", str(workdir),
                           "--port", str(port), "--items", "3"], f"http://127.0.0.1:{port}/health", log, seconds=120)


def test_a_rater_judges_in_chromium_and_the_judgment_survives_a_restart(tmp_path, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    work = Campaign(tmp_path / "work", database_url("sqlite", tmp_path / "store.db"))
    workdir = work.cfg.workdir
    alice, bob = add_rater(workdir, "alice", capsys), add_rater(workdir, "bob", capsys)
    assert main(["listen", "--workdir", str(workdir), "--add-rater", "alice"]) == 2
    assert "rater 'alice' already exists" in capsys.readouterr().err
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    browser = chromium()
    try:
        wait = WebDriverWait(browser, 30)
        with listen_server(workdir, port, tmp_path / "listen-1.log"):
            items = work.items()
            # 3 items per comparison and round: round 1 vs 0 and 2 vs 1 (2 held-out prompts each), aligned (round 2)
            # vs base, golden vs synthetic in rounds 1 and 2 (they carry the auto pairs)
            assert len(items) == 2 + 2 + 2 + 3 + 3
            browser.get(f"{base}/?token={alice}")
            assert "token" not in browser.current_url  # moved into an HttpOnly cookie
            wait.until(lambda b: b.find_element(By.ID, "sentence").text)
            first = items[0]
            assert browser.find_element(By.ID, "sentence").text == f"“{work.text[first.prompt_id]}”"
            assert browser.find_element(By.ID, "progress").text == f"alice · 0 of {len(items)} judged"
            assert not browser.find_element(By.ID, "choose-A").is_enabled()  # not before both clips were heard
            for side in "AB":
                browser.find_element(By.ID, f"play-{side}").click()
                wait.until(lambda b, side=side: b.find_element(By.ID, f"state-{side}").text == "heard")
            assert all(browser.find_element(By.ID, f"choose-{c}").is_enabled() for c in ("A", "tie", "B"))
            browser.save_screenshot(str(tmp_path / "listen.png"))
            browser.find_element(By.ID, "choose-A").click()
            wait.until(lambda b: b.find_element(By.ID, "progress").text == f"alice · 1 of {len(items)} judged")
            [judged] = work.judgments()
            assert (judged.item_id, judged.choice, judged.winner_sample_id) == (
                first.id, "A", judgments.side_sample(first, "A"))
            assert judged.rater_id == judgments.rater_by_token_hash(work.store, _hash(alice)).id
            assert judged.created_at is not None
        with listen_server(workdir, port, tmp_path / "listen-2.log"):  # a restart in the middle of the session
            browser.refresh()
            wait.until(lambda b: b.find_element(By.ID, "progress").text == f"alice · 1 of {len(items)} judged")
            second = items[1]
            assert browser.find_element(By.ID, "sentence").text == f"“{work.text[second.prompt_id]}”"
            for side in "AB":
                browser.find_element(By.ID, f"play-{side}").click()
                wait.until(lambda b, side=side: b.find_element(By.ID, f"state-{side}").text == "heard")
            browser.find_element(By.TAG_NAME, "body").send_keys("t")  # the keyboard shortcut for a tie
            wait.until(lambda b: b.find_element(By.ID, "progress").text == f"alice · 2 of {len(items)} judged")
            assert [(j.item_id, j.choice, j.winner_sample_id) for j in work.judgments()][1] == (second.id, "tie", None)
            check_access(work, base, bob, second)
    finally:
        browser.quit()


def _hash(token: str) -> str:
    from speechalign.listen.app import token_hash

    return token_hash(token)


def check_access(work: Campaign, base: str, token: str, item: ListeningItem) -> None:
    """Refused without a valid token; audio only from the store's own files under the work directory."""
    for url in (f"{base}/api/next", f"{base}/audio/{item.id}/A", f"{base}/"):
        assert get(url)[0] == 401
        assert get(url, token="not-a-token")[0] == 401
    assert get(f"{base}/api/judgments", data={"item": item.id, "choice": "A"})[0] == 401
    status, body, kind = get(f"{base}/audio/{item.id}/B", token)
    sample = judgments.side_sample(item, "B")
    assert (status, kind) == (200, "audio/wav") and body == Path(judgments.audio_path(work.store, sample)).read_bytes()
    assert get(f"{base}/audio/{item.id}/C", token)[0] == 422
    assert get(f"{base}/audio/..%2F..%2F..%2Fetc%2Fpasswd/A", token)[0] in (404, 422)
    assert get(f"{base}/audio/{item.id}/..%2F..%2F..%2Fetc%2Fpasswd", token)[0] in (404, 422)
    assert get(f"{base}/audio/999999/A", token)[0] == 404
    assert get(f"{base}/api/judgments", token, {"item": item.id, "choice": "maybe"})[0] == 422
    # a sample whose stored path lies outside the work directory is not served, even though the file exists
    outside = work.cfg.workdir.parent / "outside.wav"
    outside.write_bytes(Path(judgments.audio_path(work.store, sample)).read_bytes())
    rnd = work.rounds[1]
    work.store.add_samples([work.sample(rnd.id, TRAIN[0], "candidate", 9, [7, 7], VOICES[1], 220)
                            | {"audio_path": str(work.cfg.workdir / ".." / "outside.wav")}])
    stray = next(s for s in work.store.samples(rnd.id) if s.k == 9)
    judgments.add_items(work.store, [{"campaign_id": work.campaign.id, "round_id": rnd.id, "comparison": "criterion",
                                      "prompt_id": stray.prompt_id, "subject_sample_id": stray.id,
                                      "reference_sample_id": item.subject_sample_id, "subject_on": "A",
                                      "pair_id": None, "position": 0}])
    stray_item = next(i for i in work.items() if i.subject_sample_id == stray.id)
    status, body, _ = get(f"{base}/audio/{stray_item.id}/A", token)
    assert status == 403 and b"not a file of the work directory" in body


def judge(work: Campaign, rater: str, votes: dict[int, str]) -> None:
    """Judgments as the page posts them: {item id: A | B | tie}."""
    rater_id = judgments.rater_by_token_hash(work.store, _hash(rater)).id
    for item_id, choice in votes.items():
        judgments.add_judgment(work.store, judgments.item(work.store, work.campaign.id, item_id), rater_id, choice)


def subject_choice(item: ListeningItem, wins: bool) -> str:
    """The side to click so that the item's subject sample wins (or loses)."""
    return item.subject_on if wins else ("B" if item.subject_on == "A" else "A")


def test_report_figures_and_human_pairs_for_the_next_round(campaign, capsys):
    work = campaign
    tokens = {name: add_rater(work.cfg.workdir, name, capsys) for name in ("alice", "bob")}
    assert build_items(work.store, work.campaign, 2) == build_items(work.store, work.campaign, 2)  # no duplicates
    items = work.items()
    by = {c: [i for i in items if i.comparison == c] for c in ("round_vs_previous", "golden_vs_synthetic")}
    r2 = [i for i in by["round_vs_previous"] if i.round_id == work.rounds[2].id]
    gold = by["golden_vs_synthetic"]
    assert len(r2) == 2 and len(gold) == 4 and all(i.pair_id is not None for i in gold)
    # round 2 vs 1: alice prefers round 2 twice; bob once and a tie; golden vs synthetic: alice picks golden
    # on 3 of 4, bob agrees on the first two and picks the synthetic one on the third
    judge(work, tokens["alice"], {r2[0].id: subject_choice(r2[0], True), r2[1].id: subject_choice(r2[1], True),
                                  **{i.id: subject_choice(i, n < 3) for n, i in enumerate(gold)}})
    judge(work, tokens["bob"], {r2[0].id: subject_choice(r2[0], True), r2[1].id: "tie",
                                gold[0].id: subject_choice(gold[0], True), gold[1].id: subject_choice(gold[1], True),
                                gold[2].id: subject_choice(gold[2], False)})
    judge(work, tokens["bob"], {r2[0].id: subject_choice(r2[0], False)})  # a resent answer is ignored
    assert work.store.count(Judgment) == 11

    report = campaign_report(work.cfg)["listening"]
    rows = {(r["comparison"], r["round"]): r for r in report["comparisons"]}
    assert set(rows) == {("round_vs_previous", 2), ("golden_vs_synthetic", 1), ("golden_vs_synthetic", 2)}
    r = rows[("round_vs_previous", 2)]
    assert (r["label"], r["wins"], r["losses"], r["ties"], r["judgments"]) == ("round 2 vs round 1", 3, 0, 1, 4)
    assert r["rate"] == 1.0 and r["ci_low"] == pytest.approx(wilson(3, 3)[0]) and r["ci_high"] == 1.0
    # golden wins: alice 3 of 4, bob 2 of 3 -> 5 of 7 non-tie judgments on automatic pairs
    assert report["criterion_agreement"] == {"judgments": 7, "agree": 5, "ties": 0, "rate": 5 / 7,
                                                   "ci_low": wilson(5, 7)[0], "ci_high": wilson(5, 7)[1]}
    # items judged by both: r2[0] agree, r2[1] disagree (subject vs tie), gold 0, 1 agree, gold 2 disagree
    agreement = report["rater_agreement"]
    assert agreement["items"] == 5 and agreement["percent_agreement"] == pytest.approx(3 / 5)
    # Fleiss: outcome shares over those items subject 8/10, reference 1/10, tie 1/10 -> chance agreement 0.66
    assert agreement["fleiss_kappa"] == pytest.approx((0.6 - 0.66) / (1 - 0.66))
    text = format_table(campaign_report(work.cfg))
    assert "listening tests: 11 judgments (alice 6, bob 5)" in text
    assert re.search(r"round 2 vs round 1\s+3\s+0\s+1\s+4\s+1\.000\s+0\.439-1\.000", text)
    assert "picked its chosen sample in 5 of 7 non-tie judgments (0.714" in text

    # the next round mixes human pairs into its DPO data: majority of non-tie answers on train-prompt items only
    work.cfg.pairs.human = "mix"
    rnd = work.store.open_round(work.campaign.id, 3, "/policy-3")
    text = TRAIN[0]
    work.store.add_samples([work.sample(rnd.id, text, "golden", 0, [1, 2, 3], VOICES[0], 175),
                            work.sample(rnd.id, text, "candidate", 0, [5, 6], VOICES[1], 220)])
    ctx = RoundContext(work.cfg, work.store, work.campaign, rnd, work.cfg.layout)
    scored = Scores(sample_ids=tuple(s.id for s in work.store.samples(rnd.id)), metrics=())
    result = build_pairs.fn(ctx, scored)
    assert (result.pairs, result.human_pairs) == (1, 3)
    human = [p for p in work.store.pairs(rnd.id) if p.source == "human"]
    # gold 0 and 1: both picked golden; gold 2: an even split gives no pair; gold 3: alice alone picked the synthetic
    expected = {(i.subject_sample_id, i.reference_sample_id) for i in gold[:2]} | {
        (gold[3].reference_sample_id, gold[3].subject_sample_id)}
    assert {(p.chosen_sample_id, p.rejected_sample_id) for p in human} == expected
    assert all(p.criterion == "human" and p.round_id == rnd.id for p in human)
    held_out = {i.subject_sample_id for i in r2} | {i.reference_sample_id for i in r2}
    assert not held_out & {s for p in human for s in (p.chosen_sample_id, p.rejected_sample_id)}
    used = work.store.samples_by_id(s for p in human for s in (p.chosen_sample_id, p.rejected_sample_id))
    assert {s.kind for s in used.values()} == {"golden", "candidate"} and all(s.tokens for s in used.values())
    assert build_pairs.fn(ctx, scored).human_pairs == 3 and work.store.count(Pair, round_id=rnd.id) == 4

    # DPO's data: the round's automatic pair and the human pairs, whose samples are from rounds 1 and 2
    from dataclasses import asdict

    from speechalign.models.codec_lm import (
        CodecLM,
        SpeechFormat,
        build_demo_model,
        build_demo_tokenizer,
        completion_text,
    )
    from speechalign.tasks.train import preference_dataset

    tokenizer = build_demo_tokenizer(16)
    lm = CodecLM(build_demo_model(tokenizer, 1, 16, 2, 64, seed=0), tokenizer,
                 {"codebook_size": 16, "format": asdict(SpeechFormat(speaker_in_prompt=False))})
    rows = {(r["chosen"], r["rejected"]) for r in preference_dataset(work.store, rnd.id, lm).to_list()}
    assert {(completion_text(used[p.chosen_sample_id].tokens), completion_text(used[p.rejected_sample_id].tokens))
            for p in human} <= rows
    assert {work.store.round(s.round_id).number for s in used.values()} <= {1, 2}


def test_the_human_pairs_knob_is_checked():
    from speechalign.config import ConfigError, load_config

    assert load_config(overrides=["pairs.human=mix"]).pairs.human == "mix"
    with pytest.raises(ConfigError, match="pairs.human = 'always'; it can be 'off', 'mix'"):
        load_config(overrides=["pairs.human=always"])


def test_figures():
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # Wilson 95% for 8 of 10
    assert wilson(0, 0) is None
    assert listening_figures([])["comparisons"] == []


def test_listen_says_what_is_missing(tmp_path, capsys):
    from speechalign.config import load_config, save_config

    workdir = tmp_path / "work"
    save_config(load_config(workdir=str(workdir)))
    assert main(["listen", "--workdir", str(workdir)]) == 2
    assert "no campaign 'demo' in the preference store" in capsys.readouterr().err
    assert main(["listen", "--workdir", str(workdir), "--add-rater", " "]) == 2
    assert "--add-rater needs a name" in capsys.readouterr().err
    store = open_store(load_config(workdir=str(workdir)).store_url)
    campaign = store.create_campaign("demo", {}, "/base")
    store.finish_round(store.open_round(campaign.id, 0, "/base").id, "completed")
    assert main(["listen", "--workdir", str(workdir)]) == 2
    assert "nothing to listen to yet" in capsys.readouterr().err
    assert main(["listen", "--workdir", str(workdir), "--items", "0"]) == 2
    assert "give at least 1 item" in capsys.readouterr().err


def test_samples_no_metric_listened_to_are_decoded_when_drawn(tmp_path):
    """Under golden_vs_synthetic a round decodes no candidate (tasks/decode.py); the listening page decodes the
    golden and candidate samples it draws, through the campaign's own decoding path, and only those."""
    from speechalign.preference_store.schema import Sample
    from speechalign.tasks.decode import decode_for_listening

    work = Campaign(tmp_path / "work", f"sqlite:///{tmp_path / 'store.db'}")
    work.cfg.codec.acoustic = "layer1_only"  # no acoustic stage in this work directory
    rnd = work.rounds[1]
    with work.store.session() as s:  # round 1's golden and candidates were never decoded
        s.query(Sample).filter(Sample.round_id == rnd.id, Sample.kind != "heldout").update({"audio_path": None})
    drawn = []

    def decode(samples):
        drawn.extend(samples)
        return decode_for_listening(work.cfg, work.store, samples)

    build_items(work.store, work.campaign, 1, decode=decode)
    items = [i for i in work.items() if i.round_id == rnd.id and i.comparison == "golden_vs_synthetic"]
    assert len(items) == 1  # one item per comparison and round was asked for
    decoded = {s.id for s in drawn}
    assert decoded == {items[0].subject_sample_id, items[0].reference_sample_id}  # what was drawn, nothing more
    for sample in work.store.samples_by_id(decoded).values():
        info = sf.info(sample.audio_path)
        assert Path(sample.audio_path).is_relative_to(work.cfg.workdir) and info.samplerate == 16000
        assert info.frames == len(sample.tokens) * 320
    silent = [s for s in work.store.samples(rnd.id) if s.kind != "heldout" and s.id not in decoded]
    assert silent and all(s.audio_path is None for s in silent)
