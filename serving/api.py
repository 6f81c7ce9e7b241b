"""The ranking API's request and response types (msgspec structs) and its OpenAPI document.

Decoding is strict (unknown fields, wrong types and missing fields are errors that name
the field); the limits that are settings (candidates per request, id lengths, the body
size) are checked by :func:`validate` after decoding, so each rejection says which limit.

Example:
    >>> req = decode_rank(b'{"user_id": "7", "candidates": [{"item_id": 3}]}')
    >>> req.candidates[0].item_id, req.k is None
    (3, True)
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

Id = Annotated[str, Meta(min_length=1)] | Annotated[int, Meta(ge=0, le=2**63 - 1)]


class Candidate(Struct, forbid_unknown_fields=True):
    """One item to score: its id and optionally its category (as on lum.events)."""

    item_id: Id
    category: Id | None = None


# a logged impression's event id is "<request_id>:<position>" and must fit the event
# contract's id limit (events.max_id_chars, 128 by default) for any position
MAX_REQUEST_ID = 96
# the condition of a request that names none: it is scored and logged as this condition
NO_CONDITION = "none"


class RankRequest(Struct, forbid_unknown_fields=True):
    """``POST /v1/rank``: score ``candidates`` for ``user_id`` under ``condition`` (none
    given: :data:`NO_CONDITION`). ``log: false`` marks a read that no user is shown (a probe,
    a preview): it is not logged as impressions and so never becomes training data."""

    user_id: Id
    candidates: list[Candidate]
    condition: Id | None = None
    k: Annotated[int, Meta(ge=1)] | None = None
    request_id: Annotated[str, Meta(min_length=1, max_length=MAX_REQUEST_ID)] | None = None
    log: bool = True


class ScoredItem(Struct):
    """A candidate with its click probability; ``new_item``: the version has no row of
    its own for it (scored from the learned default row)."""

    item_id: str
    score: float
    new_item: bool
    category: str | None = None


class RankResponse(Struct):
    """The candidates sorted by score (best first, at most ``k``), who scored them, and
    the cold-start flags: ``new_user`` (no row of its own in the version), ``history``
    (events of the user's sequence used), ``lum_user`` (a condition-query vector found);
    ``history_ts``: event time (ms) of the newest event in the user's stored sequence when
    the list was scored (None: no sequence), so a client can tell that its click is in;
    ``randomized``: served in a random order (exploration), not the ranker's."""

    request_id: str
    items: list[ScoredItem]
    ranker_version: str
    backbone_version: str | None
    new_user: bool
    history: int
    lum_user: bool
    new_condition: bool
    history_ts: int | None = None
    randomized: bool = False


class ErrorBody(Struct):
    """Every 4xx/5xx: ``error`` is a short code (``bad_request``, ``overloaded``, ...),
    ``detail`` the precise reason."""

    error: str
    detail: str


class ModelInfo(Struct):
    """``GET /v1/models``: the version being served."""

    ranker_version: str
    path: str
    loaded_at_ms: int
    published_at_ms: int
    age_s: float
    backbone_version: str | None
    samples_learned: int
    pinned: bool
    vectors_versions: list[int]
    data_watermark_ms: int | None


class ModelsResponse(Struct):
    loaded: ModelInfo | None
    available: list[str]


class Health(Struct):
    status: str
    detail: str = ""


_RANK_DECODER = msgspec.json.Decoder(RankRequest)
ENCODER = msgspec.json.Encoder()


def decode_rank(body: bytes) -> RankRequest:
    """Raises ``msgspec.ValidationError`` / ``msgspec.DecodeError`` naming the problem."""
    return _RANK_DECODER.decode(body)


def as_text(value: str | int) -> str:
    """Ids on the wire may be integers: normalised to their decimal string (as events)."""
    return value if isinstance(value, str) else str(value)


def validate(req: RankRequest, max_candidates: int, max_id_chars: int) -> str | None:
    """The first limit ``req`` breaks, as a precise reason; None when it keeps them all."""
    n = len(req.candidates)
    if n == 0:
        return "candidates: empty list (at least one candidate is needed)"
    if n > max_candidates:
        return f"candidates: {n} exceed the limit of {max_candidates} per request"
    if req.k is not None and req.k > max_candidates:
        return f"k: {req.k} exceeds the limit of {max_candidates}"
    fields: list[tuple[str, str | int | None]] = [
        ("user_id", req.user_id),
        ("condition", req.condition),
    ]
    for i, c in enumerate(req.candidates):
        fields.append((f"candidates[{i}].item_id", c.item_id))
        fields.append((f"candidates[{i}].category", c.category))
    if req.request_id is not None:
        fields.append(("request_id", req.request_id))
    for name, value in fields:
        if not isinstance(value, str):
            continue
        if len(value) > max_id_chars or not value.strip():
            what = "blank" if not value.strip() else f"longer than {max_id_chars} characters"
            return f"{name}: {what}"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{name}: not encodable as UTF-8 (a lone surrogate escape)"
    seen: dict[str, int] = {}
    for i, c in enumerate(req.candidates):
        key = as_text(c.item_id)
        if key in seen:
            return f"candidates[{i}].item_id: duplicate of candidates[{seen[key]}] ({key!r})"
        seen[key] = i
    return None


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document served at ``GET /openapi.json``."""
    types = (RankRequest, RankResponse, ErrorBody, ModelsResponse, Health)
    (req, resp, err, models, health), components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )

    def body(schema: dict[str, Any], doc: str) -> dict[str, Any]:
        return {"description": doc, "content": {"application/json": {"schema": schema}}}

    errors = {
        "400": body(err, "malformed JSON, wrong types, missing fields, broken limits"),
        "413": body(err, "request body over serving.max_body_bytes"),
        "422": body(err, "a condition the served version has never seen"),
        "503": body(err, "overloaded (Retry-After set) or no version loaded yet"),
        "504": body(err, "not answered within serving.deadline_ms"),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lumstream ranking service",
            "version": "1",
            "description": "Scores candidates for a user with the newest published ranker "
            "version, from the user's sequence as the store holds it now (docs/serving.md).",
        },
        "paths": {
            "/v1/rank": {
                "post": {
                    "summary": "Score and sort candidates for a user",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": req}},
                    },
                    "responses": {"200": body(resp, "the candidates, best first"), **errors},
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "The version loaded, since when, and how old its data is",
                    "responses": {"200": body(models, "what is loaded")},
                }
            },
            "/healthz": {"get": {"responses": {"200": body(health, "alive")}}},
            "/readyz": {
                "get": {
                    "responses": {
                        "200": body(health, "a version, its vectors and the store are loaded"),
                        "503": body(health, "not ready; detail says what is missing"),
                    }
                }
            },
            "/metrics": {"get": {"summary": "Prometheus metrics of this worker process"}},
        },
        "components": {"schemas": components},
    }
