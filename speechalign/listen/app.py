"""The A/B listening page: a small FastAPI app over the preference store.

- A rater opens `/?token=TOKEN` (the link `speechalign listen --add-rater NAME` prints); the token is
  checked against the stored sha256, put in an HttpOnly cookie and dropped from the address bar.
  Every other route takes the token from that cookie, an `Authorization: Bearer` header or `?token=`;
  without a valid one it answers 401.
- `GET /api/next`: the rater's next item (its sentence and the two clips' URLs) and progress;
  `POST /api/judgments` {"item", "choice": A | B | tie} records the answer at once (a restart loses
  nothing) and returns the next item.
- `GET /audio/{item}/{A|B}`: the item's clip on that side. The file is the one the store names for the
  sample, served only if it lies under the work directory; nothing from the request becomes a path.
"""

from __future__ import annotations

import hashlib
import secrets
from importlib.resources import files
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from pydantic import BaseModel

from speechalign.preference_store import judgments
from speechalign.preference_store.schema import Campaign, ListeningItem, Rater
from speechalign.preference_store.store import PreferenceStore

COOKIE = "speechalign_rater"
REFUSED = ("a valid rater token is needed: open the link `speechalign listen --add-rater NAME` printed "
           "(it ends in ?token=...), or send the token as an `Authorization: Bearer` header")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_rater(store: PreferenceStore, name: str) -> str:
    """Register a rater; return their token (only its hash is stored, so it is shown once)."""
    if not name.strip():
        raise ValueError("--add-rater needs a name, e.g. --add-rater alice")
    token = secrets.token_urlsafe(24)
    judgments.add_rater(store, name.strip(), token_hash(token))
    return token


class Answer(BaseModel):
    item: int
    choice: Literal["A", "B", "tie"]


def create_app(store: PreferenceStore, campaign: Campaign, workdir: Path) -> FastAPI:
    app = FastAPI(title="speechalign listening test", docs_url=None, redoc_url=None, openapi_url=None)
    root = workdir.resolve()
    page = (files("speechalign.listen") / "page.html").read_text()

    def token_of(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.query_params.get("token") or request.cookies.get(COOKIE)

    def rater_or_none(request: Request) -> Rater | None:
        token = token_of(request)
        return judgments.rater_by_token_hash(store, token_hash(token)) if token else None

    def rater(request: Request) -> Rater:
        found = rater_or_none(request)
        if found is None:
            raise HTTPException(401, REFUSED)
        return found

    def next_for(who: Rater) -> dict:
        judged, total = judgments.progress(store, campaign.id, who.id)
        found = judgments.next_item(store, campaign.id, who.id)
        item = None if found is None else {"id": found[0].id, "text": found[1],
                                           "audio": {side: f"/audio/{found[0].id}/{side}" for side in "AB"}}
        return {"rater": who.name, "judged": judged, "total": total, "item": item}

    def campaign_item(item_id: int) -> ListeningItem:
        found = judgments.item(store, campaign.id, item_id)
        if found is None:
            raise HTTPException(404, f"no listening item {item_id} in campaign {campaign.name!r}")
        return found

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        who = rater_or_none(request)
        if who is None:
            return HTMLResponse(f"<!doctype html><title>speechalign listening test</title><p>{REFUSED}</p>", 401)
        if "token" in request.query_params:  # keep the token in a cookie, out of the address bar and history
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, request.query_params["token"], httponly=True, samesite="strict",
                                max_age=30 * 24 * 3600)
            return response
        return HTMLResponse(page)

    @app.get("/api/next")
    def next_item(who: Rater = Depends(rater)) -> dict:
        return next_for(who)

    @app.post("/api/judgments")
    def judge(answer: Answer, who: Rater = Depends(rater)) -> dict:
        judgments.add_judgment(store, campaign_item(answer.item), who.id, answer.choice)
        return next_for(who)

    @app.get("/audio/{item_id}/{side}")
    def audio(item_id: int, side: Literal["A", "B"], who: Rater = Depends(rater)) -> FileResponse:
        sample_id = judgments.side_sample(campaign_item(item_id), side)
        stored = judgments.audio_path(store, sample_id)
        path = (root / stored).resolve() if stored else None
        if path is None or not path.is_relative_to(root):
            raise HTTPException(403, f"sample {sample_id}'s audio is not a file of the work directory; "
                                     "it is not served")
        if not path.is_file():
            raise HTTPException(404, f"sample {sample_id}'s audio file is missing from the work directory")
        return FileResponse(path, media_type="audio/wav")

    return app
