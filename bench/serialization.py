"""Wire-format comparison for lum.events on a realistic event mix.

Formats (each with the same events; "decode" includes the contract's checks):

- ``json``: stdlib ``json.dumps`` (compact, sorted keys) / ``json.loads`` + ``validate``;
- ``orjson``: ``streams.contracts.events.encode`` / ``decode`` (the chosen format);
- ``worker batch+ids``: the stream worker's columnar path (``streams.worker.decode``): a msgspec
  decoder built from the contract checks clean batches in C, the ``decode`` reference
  takes over when anything is off; it also builds the id columns, so it does more work;
- ``orjson-parse``: ``orjson.loads`` alone, no checks (the floor of any JSON decode);
- ``msgspec-json``: msgspec JSON with a typed ``Struct`` that carries the contract as
  constraints (lengths, action literal, ts lower bound), plus the ts upper bound;
- ``msgspec-msgpack``: the same Struct as MessagePack (binary; not JSON).

Usage::

    python bench/serialization.py            # a table
    python bench/serialization.py --json     # one JSON object
    python bench/serialization.py --events 50000

``bench/produce.py`` imports :func:`run_comparison`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.config import EventConfig
from streams.contracts.events import (
    Event,
    EventError,
    Reason,
    decode,
    encode,
    to_dict,
    validate,
)
from streams.importers.movielens import ML100K_GENRES
from streams.worker.decode import decode_batch

CATEGORIES = ML100K_GENRES[1:]  # realistic category names: the MovieLens genres
SEARCHES = ("red running shoes", "birthday gift for dad", "usb-c cable 2m", "lego technic")
START_MS = 1_767_225_600_000


def make_events(n: int, seed: int = 7) -> list[Event]:
    """A realistic mix: 90% impressions, 8% clicks, 2% purchases; numeric and string ids;
    condition = category (90%) or a search term; every event has features["category"],
    30% also page/device/price/promo context."""
    rng = random.Random(seed)
    cfg = EventConfig()
    out = []
    ts = START_MS
    for i in range(n):
        ts += rng.randint(0, 40)
        r = rng.random()
        action = "impression" if r < 0.90 else "click" if r < 0.98 else "purchase"
        category = rng.choice(CATEGORIES)
        features: dict[str, Any] = {"category": category}
        if rng.random() < 0.3:
            features.update(
                page=rng.randint(1, 20),
                device=rng.choice(("ios", "android", "web")),
                price=round(rng.uniform(1, 200), 2),
                promo=rng.random() < 0.1,
            )
        obj = {
            "event_id": f"g{seed}-{i}",
            "user_id": str(rng.randint(1, 2_000_000))
            if rng.random() < 0.7
            else f"user-{rng.getrandbits(48):012x}",
            "item_id": str(int(rng.paretovariate(1.1) * 1000)),
            "action": action,
            "condition": category if rng.random() < 0.9 else rng.choice(SEARCHES),
            "ts": ts,
            "features": features,
        }
        out.append(validate(obj, cfg, now_ms=START_MS + 10**9))
    return out


def _loop(fn: Callable[[Any], object], items: list[Any]) -> Callable[[], object]:
    return lambda: [fn(x) for x in items]


def _best_rate(fn: Callable[[], object], n: int, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best if best > 0 else 0.0


def _codecs(
    cfg: EventConfig, now_ms: int
) -> dict[str, tuple[Callable[[Event], bytes], Callable[[bytes], object]]]:
    """format -> (encode one Event, decode-and-check one payload)."""

    def json_encode(ev: Event) -> bytes:
        return json.dumps(to_dict(ev), separators=(",", ":"), sort_keys=True).encode()

    def json_decode(raw: bytes) -> Event:
        if len(raw) > cfg.max_event_bytes:
            raise EventError(Reason.OVERSIZED, f"{len(raw)} bytes")
        return validate(json.loads(raw), cfg, now_ms)

    codecs: dict[str, tuple[Callable[[Event], bytes], Callable[[bytes], object]]] = {
        "json": (json_encode, json_decode),
        "orjson": (encode, lambda raw: decode(raw, cfg, now_ms)),
        "orjson-parse": (encode, orjson.loads),
    }
    try:
        import msgspec
    except ImportError:  # msgspec is a dev dependency; the table just lacks its rows
        return codecs
    from typing import Annotated, Literal

    Id = Annotated[str, msgspec.Meta(min_length=1, max_length=cfg.max_id_chars)]
    Feature = str | int | float | bool

    features = Annotated[dict[str, Feature], msgspec.Meta(max_length=cfg.max_features)]
    EventStruct = msgspec.defstruct(
        "EventStruct",
        [
            ("event_id", Id),
            ("user_id", Id),
            ("item_id", Id),
            ("action", Literal[tuple(cfg.actions)]),
            ("condition", Id),
            ("ts", Annotated[int, msgspec.Meta(ge=cfg.min_ts_ms)]),
            ("features", features | None, None),
        ],
        forbid_unknown_fields=True,
    )

    hi = now_ms + cfg.max_future_ms

    def checked(ev: Any) -> Any:
        if ev.ts > hi:
            raise ValueError("ts in the future")
        return ev

    json_enc, json_dec = msgspec.json.Encoder(), msgspec.json.Decoder(EventStruct)
    mp_enc, mp_dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(EventStruct)
    codecs["msgspec-json"] = (json_enc.encode, lambda raw: checked(json_dec.decode(raw)))
    codecs["msgspec-msgpack"] = (mp_enc.encode, lambda raw: checked(mp_dec.decode(raw)))
    return codecs


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "orjson": orjson.__version__,
    }


def run_comparison(n: int = 20_000, repeat: int = 3) -> dict[str, Any]:
    """Encode/decode rates and sizes of each format over ``n`` events (best of ``repeat``).

    Returns ``{"machine", "events", "formats": {name: {encode_per_s, decode_per_s,
    bytes_per_event}}, "chosen"}``.
    """
    cfg = EventConfig()
    events = make_events(n)
    now_ms = START_MS + 10**9
    formats: dict[str, dict[str, float]] = {}
    for name, (enc, dec) in _codecs(cfg, now_ms).items():
        payloads = [enc(ev) for ev in events]
        decoded = dec(payloads[0])
        if name != "orjson-parse" and getattr(decoded, "user_id", None) != events[0].user_id:
            raise AssertionError(f"{name}: round trip changed the event")
        formats[name] = {
            "encode_per_s": round(_best_rate(_loop(enc, events), n, repeat)),
            "decode_per_s": round(_best_rate(_loop(dec, payloads), n, repeat)),
            "bytes_per_event": round(sum(map(len, payloads)) / n, 1),
        }
    payloads = [encode(ev) for ev in events]
    batch = 5_000
    formats["worker batch+ids"] = {
        "encode_per_s": formats["orjson"]["encode_per_s"],
        "decode_per_s": round(
            _best_rate(
                lambda: [
                    decode_batch(payloads[i : i + batch], cfg, now_ms) for i in range(0, n, batch)
                ],
                n,
                repeat,
            )
        ),
        "bytes_per_event": formats["orjson"]["bytes_per_event"],
    }
    return {"machine": machine(), "events": n, "formats": formats, "chosen": "orjson"}


def format_table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"wire formats, {result['events']:,} events; {m['platform']}, {m['cpu_count']} CPUs, "
        f"Python {m['python']}",
        f"{'format':<17}{'encode/s':>12}{'decode+check/s':>16}{'bytes/event':>13}",
    ]
    for name, row in result["formats"].items():
        lines.append(
            f"{name:<17}{row['encode_per_s']:>12,}{row['decode_per_s']:>16,}"
            f"{row['bytes_per_event']:>13}"
        )
    lines.append(f"chosen: {result['chosen']} (orjson-parse: parsing only, no checks)")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=20_000, help="events per measurement")
    p.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    result = run_comparison(args.events, args.repeat)
    print(orjson.dumps(result).decode() if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
