"""MovieLens ratings -> impression/click events, so the label join sees live-like traffic.

Flavours, detected from the files in the directory:

- ``latest``: ``ratings.csv`` + ``movies.csv`` with header rows, UTF-8 (ml-latest-small,
  ml-latest, ML-20M, ML-25M).
- ``1m``: ``ratings.dat`` + ``movies.dat``, ``::``-separated, latin-1 (ML-1M, ML-10M).
- ``100k``: ``u.data`` (tab-separated) + ``u.item`` (pipe-separated, 19 genre flags),
  latin-1; genre names from ``u.genre`` when present, else the standard list.

Each rating becomes an ``impression`` of the movie at the rating time (seconds -> ms),
with condition = the movie's FIRST listed genre (``unknown`` when it has none, e.g.
"(no genres listed)") and ``features={"category": genre}``; a rating >= the click
threshold adds a ``click`` on the same item 1 ms later. Event ids are deterministic:
``ml-<user>-<item>-imp`` and ``ml-<user>-<item>-clk``. Output is in non-decreasing event
time (a stable sort: ties keep file order, and a click follows its impression directly
unless other ratings share the same second). Rows with an unknown movie id are bad rows.

Example:
    >>> detect_flavour(Path("/nonexistent"))
    Traceback (most recent call last):
    ...
    streams.importers.rows.ImportSetupError: /nonexistent: not a directory
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streams.contracts.events import Event
from streams.importers.order import Disorder
from streams.importers.rows import ImportRun, ImportSetupError, RowError, RowReason, short

FLAVOURS: dict[str, tuple[str, str]] = {  # flavour -> (ratings file, movies file)
    "latest": ("ratings.csv", "movies.csv"),
    "1m": ("ratings.dat", "movies.dat"),
    "100k": ("u.data", "u.item"),
}
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
UNKNOWN_GENRE = "unknown"
_NO_GENRES = {"", "(no genres listed)"}
DEFAULT_CLICK_THRESHOLD = 4.0


def detect_flavour(directory: Path) -> str:
    """``latest``, ``1m`` or ``100k`` from the files present; ImportSetupError otherwise."""
    if not directory.is_dir():
        raise ImportSetupError(f"{directory}: not a directory")
    for flavour, (ratings, movies) in FLAVOURS.items():
        if (directory / ratings).is_file() and (directory / movies).is_file():
            return flavour
    expected = "; ".join(f"{r} + {m}" for r, m in FLAVOURS.values())
    raise ImportSetupError(f"{directory}: no MovieLens files found (expected {expected})")


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    with path.open(encoding=encoding, newline="") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if line:
                yield lineno, line


def _first_genre(genres: str) -> str:
    first = genres.split("|", 1)[0].strip()
    return UNKNOWN_GENRE if first in _NO_GENRES else first


def _int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RowError(RowReason.BAD_NUMBER, f"{name}: {short(text)} is not an integer") from None


def _movie_rows(directory: Path, flavour: str) -> Iterator[tuple[int, tuple[str, str] | RowError]]:
    """(line, (movie id, first genre)) per movie row, or (line, RowError)."""
    if flavour == "latest":
        with (directory / "movies.csv").open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, strict=True)
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield reader.line_num, RowError(RowReason.MALFORMED_ROW, f"CSV: {exc}")
                    continue
                if not row or (reader.line_num == 1 and not row[0].strip().isdigit()):
                    continue  # blank line or the header
                if len(row) != 3:
                    yield (
                        reader.line_num,
                        RowError(
                            RowReason.WRONG_COLUMN_COUNT,
                            f"expected 3 fields (movieId,title,genres), got {len(row)}",
                        ),
                    )
                    continue
                yield reader.line_num, (row[0], _first_genre(row[2]))
    elif flavour == "1m":
        for lineno, line in _lines(directory / "movies.dat", "latin-1"):
            fields = line.split("::")
            if len(fields) != 3:
                yield (
                    lineno,
                    RowError(
                        RowReason.WRONG_COLUMN_COUNT,
                        f"expected 3 '::'-separated fields, got {len(fields)}",
                    ),
                )
                continue
            yield lineno, (fields[0], _first_genre(fields[2]))
    else:
        names = _ml100k_genres(directory)
        for lineno, line in _lines(directory / "u.item", "latin-1"):
            fields = line.split("|")
            if len(fields) != 5 + len(names):
                yield (
                    lineno,
                    RowError(
                        RowReason.WRONG_COLUMN_COUNT,
                        f"expected {5 + len(names)} '|'-separated fields (5 + {len(names)} genre "
                        f"flags), got {len(fields)}",
                    ),
                )
                continue
            flags = fields[5:]
            genre = next(
                (g for g, f in zip(names, flags, strict=True) if f.strip() == "1"), UNKNOWN_GENRE
            )
            yield lineno, (fields[0], genre)


def _ml100k_genres(directory: Path) -> tuple[str, ...]:
    """Genre names by flag index from u.genre (``name|index`` lines), else the standard list."""
    path = directory / "u.genre"
    if not path.is_file():
        return ML100K_GENRES
    by_index: dict[int, str] = {}
    for lineno, line in _lines(path, "latin-1"):
        name, sep, index = line.rpartition("|")
        if not sep or not index.strip().isdigit() or not name.strip():
            raise ImportSetupError(f"{path}:{lineno}: expected 'name|index', got {line!r}")
        by_index[int(index)] = name.strip()
    if sorted(by_index) != list(range(len(by_index))):
        raise ImportSetupError(f"{path}: genre indices are not 0..{len(by_index) - 1}")
    return tuple(by_index[i] for i in range(len(by_index)))


def load_genres(directory: Path, flavour: str, run: ImportRun) -> dict[int, str]:
    """movie id -> first genre; malformed movie rows are reported as bad rows."""
    movies_file = str(directory / FLAVOURS[flavour][1])
    genres: dict[int, str] = {}
    for lineno, parsed in _movie_rows(directory, flavour):
        try:
            if isinstance(parsed, RowError):
                raise parsed
            genres[_int("movieId", parsed[0].strip())] = parsed[1]
        except RowError as exc:
            run.bad(movies_file, lineno, exc.reason, exc.detail)
            continue
        run.ok(movies_file)
    return genres


def rating_events(
    user: int, item: int, genre: str, ts_ms: int, liked: bool
) -> list[dict[str, object]]:
    """The impression (and, when liked, the click 1 ms later) of one rating, unvalidated."""
    u, i = str(user), str(item)
    out: list[dict[str, object]] = [
        {
            "event_id": f"ml-{u}-{i}-imp",
            "user_id": u,
            "item_id": i,
            "action": "impression",
            "condition": genre,
            "ts": ts_ms,
            "features": {"category": genre},
        }
    ]
    if liked:
        out.append(
            {
                "event_id": f"ml-{u}-{i}-clk",
                "user_id": u,
                "item_id": i,
                "action": "click",
                "condition": genre,
                "ts": ts_ms + 1,
                "features": {"category": genre},
            }
        )
    return out


def _parse_rating(line: str, sep: str) -> tuple[int, int, float, int]:
    fields = line.split(sep)
    if len(fields) != 4:
        raise RowError(
            RowReason.WRONG_COLUMN_COUNT,
            f"expected 4 {sep!r}-separated fields (user, movie, rating, "
            f"timestamp), got {len(fields)}",
        )
    user = _int("user", fields[0])
    item = _int("movie", fields[1])
    try:
        rating = float(fields[2])
    except ValueError:
        raise RowError(
            RowReason.BAD_NUMBER, f"rating: {short(fields[2])} is not a number"
        ) from None
    if not math.isfinite(rating):
        raise RowError(RowReason.BAD_NUMBER, f"rating: {short(fields[2])} is not finite")
    return user, item, rating, _int("timestamp", fields[3])


@dataclass
class _Ratings:
    """The parsed ratings, one list entry per rating, in file order."""

    file: str
    lines: list[int] = field(default_factory=list)
    users: list[int] = field(default_factory=list)
    items: list[int] = field(default_factory=list)
    ts_ms: list[int] = field(default_factory=list)
    liked: list[bool] = field(default_factory=list)


def import_movielens(
    directory: Path, run: ImportRun, *, click_threshold: float = DEFAULT_CLICK_THRESHOLD
) -> str:
    """Import one MovieLens directory into ``run``'s sink; returns the detected flavour.

    Two passes: the movies and ratings files are parsed first (unparseable rows and unknown
    movies reported in file order, nothing written yet), then the ratings' events are
    validated and written in event-time order (a rating whose events fail the contract is
    a bad row then).

    Args:
        directory: holds one flavour's files (see the module doc).
        run: validates, counts and writes (its sink receives the events).
        click_threshold: ratings at or above it add a click.
    """
    for action in ("impression", "click"):
        if action not in run.cfg.actions:
            raise ImportSetupError(
                f"events.actions {run.cfg.actions} lacks {action!r}, "
                f"which the MovieLens importer produces"
            )
    flavour = detect_flavour(directory)
    run.stats.source = f"MovieLens {flavour}: {directory}"
    genres = load_genres(directory, flavour, run)
    ratings_name, movies_name = FLAVOURS[flavour]
    sep = {"latest": ",", "1m": "::", "100k": "\t"}[flavour]
    encoding = "utf-8" if flavour == "latest" else "latin-1"
    parsed = _Ratings(str(directory / ratings_name))
    lines = _lines(directory / ratings_name, encoding)
    for lineno, line in run.progress(lines, desc=f"reading {ratings_name}"):
        if lineno == 1 and flavour == "latest" and not line[:1].isdigit():
            continue  # the header
        try:
            user, item, rating, ts = _parse_rating(line, sep)
            if item not in genres:
                raise RowError(RowReason.UNKNOWN_MOVIE, f"movie {item} is not in {movies_name}")
        except RowError as exc:
            run.bad(parsed.file, lineno, exc.reason, exc.detail)
            continue
        parsed.lines.append(lineno)
        parsed.users.append(user)
        parsed.items.append(item)
        parsed.ts_ms.append(ts * 1000)
        parsed.liked.append(rating >= click_threshold)
    _write_in_time_order(run, genres, parsed)
    run.flush()
    return flavour


def _write_in_time_order(run: ImportRun, genres: dict[int, str], parsed: _Ratings) -> None:
    """Validate and write the ratings' events sorted by event time (stable)."""
    disorder = Disorder()
    for t in parsed.ts_ms:
        disorder.see(t)
    run.input_disorder = disorder
    ts = np.asarray(parsed.ts_ms, dtype=np.int64)  # (R,)
    like_idx = np.flatnonzero(np.asarray(parsed.liked, dtype=bool))  # (C,)
    keys = np.concatenate([ts, ts[like_idx] + 1])  # (R + C,) impressions, then clicks
    rating_idx = np.concatenate([np.arange(len(ts)), like_idx]).tolist()  # (R + C,)
    order = np.argsort(keys, kind="stable").tolist()  # ties keep file order
    n_imp = len(ts)
    pending_clicks: dict[int, Event] = {}  # rating -> its validated click, until its turn
    for pos in run.progress(order, desc="writing", total=len(order), unit=" events"):
        r = rating_idx[pos]
        if pos >= n_imp:  # a click: written only when its rating was valid
            click = pending_clicks.pop(r, None)
            if click is not None:
                run.write((click,))
            continue
        item = parsed.items[r]
        dicts = rating_events(parsed.users[r], item, genres[item], parsed.ts_ms[r], parsed.liked[r])
        events = run.check(parsed.file, parsed.lines[r], dicts)
        if events is not None:
            run.write(events[:1])
            if len(events) > 1:
                pending_clicks[r] = events[1]
