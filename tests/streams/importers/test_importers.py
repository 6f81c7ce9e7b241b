"""Importers on small files written here: three MovieLens flavours and generic logs."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from lumstream.cli import main
from monitoring.metrics import Metrics
from streams.config import EventConfig, KafkaConfig
from streams.contracts.eventlog import iter_event_log
from streams.contracts.events import Event, decode, encode, to_dict, validate
from streams.importers.generic import ColumnMap, GenericOptions, import_generic, parse_ts
from streams.importers.movielens import detect_flavour, import_movielens
from streams.importers.rows import (
    BadRow,
    ImportAborted,
    ImportInterrupted,
    ImportRun,
    ImportSetupError,
)
from streams.importers.run import MovieLensInput, run_import
from streams.kafka.consumer import read_topic

CFG = EventConfig()
NOW = 1_767_225_600_000
T0 = 964_982_703  # seconds


class ListSink:
    """An in-memory EventSink."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.count = 0
        self.closed = False

    def write(self, event: Event) -> None:
        self.events.append(event)
        self.count += 1

    def close(self) -> None:
        self.closed = True


def make_run(strict: bool = False) -> tuple[ImportRun, ListSink, list[BadRow], Metrics]:
    sink, bad = ListSink(), list[BadRow]()
    metrics = Metrics(CollectorRegistry())
    run = ImportRun(
        "test", sink, CFG, metrics=metrics, strict=strict, on_bad=bad.append, now_ms=NOW
    )
    return run, sink, bad, metrics


def brief(events: list[Event]) -> list[tuple[str, str, str, str, int]]:
    return [(e.user_id, e.item_id, e.action, e.condition, e.ts) for e in events]


# -- MovieLens fixtures ----------------------------------------------------------------------


def write_latest(d: Path) -> Path:
    (d / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '2,"Jumanji, The (1995)",Adventure|Children|Fantasy\n'
        "3,Nothing (2000),(no genres listed)\n"
        "4,Broken\n"
        "x5,Bad id,Drama\n",
        encoding="utf-8",
    )
    (d / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        f"1,1,4.0,{T0}\n"
        f"1,2,3.5,{T0 - 100}\n"
        f"2,3,5.0,{T0}\n"
        f"2,99,4.0,{T0}\n"
        f"x,1,4.0,{T0}\n"
        "\n"
        f"3,1,NaN,{T0}\n"
        f"3,2,4.5\n"
        f"3,1,4.0,0\n",
        encoding="utf-8",
    )
    return d


def write_1m(d: Path) -> Path:
    (d / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Café Noir (1950)::Film-Noir\n".encode(
            "latin-1"
        )
    )
    (d / "ratings.dat").write_bytes(
        f"1::1::5::{T0}\n1::2::3::{T0 + 5}\n2::2::4::{T0 - 5}\n".encode("latin-1")
    )
    return d


def write_100k(d: Path, genre_file: bool) -> Path:
    flags = ["0"] * 19
    flags[3] = flags[5] = "1"  # Animation, Comedy -> the first is Animation
    none = ["0"] * 19
    (d / "u.item").write_bytes(
        (
            "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n"
            "2|Señor (1996)|01-Jan-1996||http://y|" + "|".join(none) + "\n"
            "3|Short|x\n"
        ).encode("latin-1")
    )
    (d / "u.data").write_text(f"196\t1\t3\t{T0}\n186\t2\t4\t{T0 + 1}\n22\t3\t5\t{T0}\n")
    if genre_file:
        names = ["unknown", "Action", "Adventure", "Cartoon", "Kids", "Comedy"] + [
            f"G{i}" for i in range(6, 19)
        ]
        (d / "u.genre").write_text("".join(f"{n}|{i}\n" for i, n in enumerate(names)) + "\n")
    return d


# -- MovieLens ---------------------------------------------------------------------------


def test_movielens_latest(tmp_path: Path) -> None:
    d = write_latest(tmp_path)
    run, sink, bad, metrics = make_run()
    assert import_movielens(d, run) == "latest"
    ms = T0 * 1000
    assert brief(sink.events) == [
        ("1", "2", "impression", "Adventure", ms - 100_000),
        ("1", "1", "impression", "Adventure", ms),
        ("2", "3", "impression", "unknown", ms),
        ("1", "1", "click", "Adventure", ms + 1),
        ("2", "3", "click", "unknown", ms + 1),
    ]
    first = sink.events[1]
    assert first.event_id == "ml-1-1-imp"
    assert first.features == {"category": "Adventure"}
    assert sink.events[3].event_id == "ml-1-1-clk"
    ratings, movies = str(d / "ratings.csv"), str(d / "movies.csv")
    assert [str(b).split(": ")[0] for b in bad] == [
        f"{movies}:5",
        f"{movies}:6",
        f"{ratings}:5",
        f"{ratings}:6",
        f"{ratings}:8",
        f"{ratings}:9",
        f"{ratings}:10",
    ]
    assert [b.reason for b in bad] == [
        "wrong_column_count",
        "bad_number",
        "unknown_movie",
        "bad_number",
        "bad_number",
        "wrong_column_count",
        "ts_out_of_range",
    ]
    stats = run.finish()
    assert (stats.rows_read, stats.rows_ok, stats.rows_bad) == (13, 6, 7)
    assert stats.actions == {"impression": 3, "click": 2}
    assert stats.events == 5
    ok = metrics.registry.get_sample_value(
        "lumstream_import_rows_total", {"importer": "test", "outcome": "ok"}
    )
    assert ok == 6
    rejected = metrics.registry.get_sample_value(
        "lumstream_events_rejected_total", {"stage": "import", "reason": "unknown_movie"}
    )
    assert rejected == 1


def test_movielens_events_pass_the_contract(tmp_path: Path) -> None:
    run, sink, _, _ = make_run()
    import_movielens(write_latest(tmp_path), run)
    for ev in sink.events:
        assert validate(to_dict(ev), CFG, now_ms=NOW) == ev
        assert decode(encode(ev), CFG, now_ms=NOW) == ev


def test_movielens_click_threshold(tmp_path: Path) -> None:
    run, sink, _, _ = make_run()
    import_movielens(write_latest(tmp_path), run, click_threshold=3.5)
    assert [e.item_id for e in sink.events if e.action == "click"] == ["2", "1", "3"]


def test_movielens_1m(tmp_path: Path) -> None:
    run, sink, bad, _ = make_run()
    assert import_movielens(write_1m(tmp_path), run) == "1m"
    ms = T0 * 1000
    assert brief(sink.events) == [
        ("2", "2", "impression", "Film-Noir", ms - 5000),
        ("2", "2", "click", "Film-Noir", ms - 4999),
        ("1", "1", "impression", "Animation", ms),
        ("1", "1", "click", "Animation", ms + 1),
        ("1", "2", "impression", "Film-Noir", ms + 5000),
    ]
    assert bad == []


@pytest.mark.parametrize(("genre_file", "genre"), [(False, "Animation"), (True, "Cartoon")])
def test_movielens_100k(tmp_path: Path, genre_file: bool, genre: str) -> None:
    run, sink, bad, _ = make_run()
    assert import_movielens(write_100k(tmp_path, genre_file), run) == "100k"
    ms = T0 * 1000
    assert brief(sink.events) == [
        ("196", "1", "impression", genre, ms),
        ("186", "2", "impression", "unknown", ms + 1000),
        ("186", "2", "click", "unknown", ms + 1001),
    ]
    assert [(b.line, b.reason) for b in bad] == [(3, "wrong_column_count"), (3, "unknown_movie")]


def test_movielens_needs_known_files(tmp_path: Path) -> None:
    with pytest.raises(ImportSetupError, match="no MovieLens files"):
        detect_flavour(tmp_path)


def test_movielens_strict_stops_at_the_first_bad_row(tmp_path: Path) -> None:
    run, sink, _, _ = make_run(strict=True)
    with pytest.raises(ImportAborted, match=r"movies\.csv:5: wrong_column_count"):
        import_movielens(write_latest(tmp_path), run)
    assert sink.events == []


# -- generic -----------------------------------------------------------------------------

CSV = (
    "uid,sku,kind,time,cat,dev\n"
    "u1,i1,view,1700000000,Books,ios\n"
    "u1,i1,cart,1700000001.5,Books,\n"
    "u2,i2,view,1700000002\n"
    "u2,i2,hover,1700000003,Toys,web\n"
    ",i3,view,1700000004,Toys,web\n"
    "u3,i3,view,yesterday,Toys,web\n"
    '"u4,x",i4,buy,1700000005,"Toys",web\n'
    "u5,i5,view,1,Toys,web\n"
)
OPTS = GenericOptions(
    columns=ColumnMap.parse(
        "user_id=uid,item_id=sku,ts=time,action=kind,category=cat,features.device=dev"
    ),
    ts_unit="s",
    action_map={"view": "impression", "cart": "click", "buy": "click"},
)


def test_generic_csv(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(CSV)
    run, sink, bad, _ = make_run()
    import_generic(path, OPTS, run)
    assert brief(sink.events) == [
        ("u1", "i1", "impression", "default", 1_700_000_000_000),
        ("u1", "i1", "click", "default", 1_700_000_001_500),
        ("u4,x", "i4", "click", "default", 1_700_000_005_000),
    ]
    assert sink.events[0].features == {"category": "Books", "device": "ios"}
    assert sink.events[1].features == {"category": "Books"}
    assert all(e.event_id.startswith("g-") for e in sink.events)
    assert [f"{b.file}:{b.line}: {b.reason}" for b in bad] == [
        f"{path}:4: wrong_column_count",
        f"{path}:5: unmapped_action",
        f"{path}:6: missing_value",
        f"{path}:7: bad_timestamp",
        f"{path}:9: ts_out_of_range",
    ]
    assert str(bad[1]) == (
        f"{path}:5: unmapped_action: action: 'hover' is not in --action-map (view, cart, buy)"
    )
    stats = run.finish()
    assert (stats.rows_read, stats.rows_ok, stats.rows_bad) == (8, 3, 5)


def test_generic_drop_unmapped(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(CSV)
    run, _, bad, _ = make_run()
    import_generic(path, dataclasses.replace(OPTS, drop_unmapped=True), run)
    assert "unmapped_action" not in [b.reason for b in bad]
    assert run.stats.rows_dropped == 1


def test_generic_strict(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(CSV)
    run, sink, _, _ = make_run(strict=True)
    with pytest.raises(ImportAborted, match=r"log\.csv:4: wrong_column_count"):
        import_generic(path, OPTS, run)
    # events reach the sink in event-time order once the input is read: none at a stop
    assert sink.events == []
    assert run.stats.rows_ok == 2


def test_generic_jsonl_iso_times_and_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    lines = [
        {"u": 7, "i": 42, "t": "2024-01-02T03:04:05.678Z", "q": "red shoes"},
        {"u": 7, "i": 43, "t": "2024-01-02 03:04:06", "q": ""},
        "not json",
        [1, 2],
        {"u": 8, "i": 44, "t": "02/01/2024"},
    ]
    path.write_bytes(
        b"\n".join(x.encode() if isinstance(x, str) else orjson.dumps(x) for x in lines) + b"\n"
    )
    opts = GenericOptions(
        columns=ColumnMap.parse("user_id=u,item_id=i,ts=t,condition=q"),
        ts_unit="iso",
        action="click",
        condition="browse",
    )
    run, sink, bad, _ = make_run()
    import_generic(path, opts, run)
    t = int(datetime(2024, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC).timestamp() * 1000)
    assert brief(sink.events) == [
        ("7", "42", "click", "red shoes", t),
        ("7", "43", "click", "browse", t + 322),
    ]
    assert [(b.line, b.reason) for b in bad] == [
        (3, "malformed_json"),
        (4, "malformed_row"),
        (5, "bad_timestamp"),
    ]


def test_generic_parquet_with_timestamp_column(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    pq.write_table(
        pa.table(
            {
                "user": pa.array([1, 2, None], pa.int64()),
                "item": pa.array([10.0, 11.0, 12.0]),
                "at": pa.array([when] * 3, pa.timestamp("ms", tz="UTC")),
                "id": ["a", "b", "c"],
            }
        ),
        path,
    )
    opts = GenericOptions(
        columns=ColumnMap.parse("user_id=user,item_id=item,ts=at,event_id=id"), action="impression"
    )
    run, sink, bad, _ = make_run()
    import_generic(path, opts, run)
    ms = int(when.timestamp() * 1000)
    assert [(e.event_id, e.user_id, e.item_id, e.ts) for e in sink.events] == [
        ("a", "1", "10", ms),
        ("b", "2", "11", ms),
    ]
    assert [(b.line, b.reason) for b in bad] == [(3, "missing_value")]


def test_content_event_ids_do_not_depend_on_the_format(tmp_path: Path) -> None:
    csv_path, jsonl_path = tmp_path / "a.csv", tmp_path / "a.jsonl"
    csv_path.write_text("u,i,t\n1,2,1700000000000\n1,2,1700000000001\n")
    jsonl_path.write_text('{"u":1,"i":2,"t":1700000000000}\n{"u":1,"i":2,"t":1700000000001}\n')
    opts = GenericOptions(columns=ColumnMap.parse("user_id=u,item_id=i,ts=t"), action="click")
    ids = []
    for path in (csv_path, jsonl_path):
        run, sink, _, _ = make_run()
        import_generic(path, opts, run)
        ids.append([e.event_id for e in sink.events])
    assert ids[0] == ids[1]
    assert ids[0][0] != ids[0][1]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("user_id=u,item_id=i", "missing ts"),
        ("user_id=u,item_id=i,ts=t,colour=c", "unknown field"),
        ("user_id=u,item_id=i,ts", "FIELD=COLUMN"),
        ("user_id=u,user_id=v,item_id=i,ts=t", "twice"),
    ],
)
def test_bad_map_is_a_setup_error(text: str, match: str) -> None:
    with pytest.raises(ImportSetupError, match=match):
        ColumnMap.parse(text)


def test_setup_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("u,i,t\n1,2,3\n")
    run, _, _, _ = make_run()
    cols = ColumnMap.parse("user_id=u,item_id=item,ts=t")
    with pytest.raises(ImportSetupError, match="no column 'item'"):
        import_generic(path, GenericOptions(columns=cols, action="click"), run)
    cols = ColumnMap.parse("user_id=u,item_id=i,ts=t")
    with pytest.raises(ImportSetupError, match="no action"):
        import_generic(path, GenericOptions(columns=cols), run)
    with pytest.raises(ImportSetupError, match="'like'"):
        import_generic(path, GenericOptions(columns=cols, action="like"), run)
    with pytest.raises(ImportSetupError, match="no such file"):
        import_generic(tmp_path / "nope.csv", GenericOptions(columns=cols, action="click"), run)


def test_parse_ts_units() -> None:
    assert parse_ts("1700000000", "s") == 1_700_000_000_000
    assert parse_ts(1.5, "s") == 1500
    assert parse_ts("1700000000123", "ms") == 1_700_000_000_123
    assert parse_ts("1970-01-01T00:00:01+01:00", "iso") == -3_599_000
    assert parse_ts(datetime(1970, 1, 1, 0, 0, 2), "ms") == 2000  # naive = UTC


# -- one import, end to end ------------------------------------------------------------------


def test_run_import_stopped_leaves_no_log(tmp_path: Path) -> None:
    d = write_latest(tmp_path)
    stop = threading.Event()
    stop.set()
    out = tmp_path / "o.jsonl"
    with pytest.raises(ImportInterrupted, match="interrupted after"):
        run_import(MovieLensInput(d), CFG, out=out, stop=stop)
    assert not out.exists()
    assert not (tmp_path / "o.jsonl.tmp").exists()
    with pytest.raises(ImportSetupError, match="unknown event-log format"):
        run_import(MovieLensInput(d), CFG, out=tmp_path / "o.csv")


@pytest.mark.integration
def test_run_import_into_kafka_gives_the_events_of_the_log(
    tmp_path: Path, kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    d = write_latest(tmp_path)
    stats = run_import(MovieLensInput(d), CFG, out=tmp_path / "o.jsonl")
    produced = run_import(
        MovieLensInput(d),
        CFG,
        kafka=kafka_cfg,
        bootstrap=kafka_cfg.bootstrap_servers,
        metrics=metrics,
    )
    assert produced.events == stats.events == 5
    records = read_topic(kafka_cfg, kafka_cfg.bootstrap_servers, kafka_cfg.topic_events)
    logged = [raw for _, raw in iter_event_log(tmp_path / "o.jsonl")]
    assert sorted(r.value for r in records) == sorted(logged)
    assert {r.key for r in records} == {b"1", b"2"}
    assert (
        metrics.registry.get_sample_value(
            "lumstream_events_produced_total",
            {"topic": kafka_cfg.topic_events, "source": "import-movielens"},
        )
        == 5
    )


# -- the command -------------------------------------------------------------------------


def cli(*args: str) -> int:
    return main(["--set", "metrics.enabled=false", "import", *args])


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz", "out.parquet"])
def test_cli_movielens(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    d = write_latest(tmp_path)
    out = tmp_path / name
    assert cli("movielens", str(d), "--out", str(out), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events"] == 5
    assert summary["bad"]["bad_number"] == 3
    assert [n for n, _ in iter_event_log(out)] == [1, 2, 3, 4, 5]


def test_cli_reports_bad_rows_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = write_latest(tmp_path)
    assert cli("movielens", str(d), "--out", str(tmp_path / "o.jsonl"), "--show-bad", "2") == 0
    captured = capsys.readouterr()
    assert f"{d / 'movies.csv'}:5: wrong_column_count" in captured.err
    assert "more bad rows are counted" in captured.err
    assert "unknown_movie: 1" in captured.out


def test_cli_strict_leaves_no_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = write_latest(tmp_path)
    out = tmp_path / "o.jsonl"
    assert cli("movielens", str(d), "--out", str(out), "--strict") == 1
    assert not out.exists()
    assert not (tmp_path / "o.jsonl.tmp").exists()
    assert "--strict" in capsys.readouterr().err


def test_cli_generic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.tsv"
    path.write_text("uid\tsku\tkind\ttime\n1\t2\tview\t1700000000\n1\t2\tzap\t1700000001\n")
    out = tmp_path / "o.jsonl"
    code = cli(
        "generic",
        str(path),
        "--map",
        "user_id=uid,item_id=sku,ts=time,action=kind",
        "--action-map",
        "view=impression",
        "--ts-unit",
        "s",
        "--out",
        str(out),
        "--quiet",
    )
    assert code == 0
    assert len(list(iter_event_log(out))) == 1
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "unmapped_action: 1" in captured.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["movielens", "{d}", "--out", "{d}/o.csv"], "unknown event-log format"),
        (["movielens", "{d}/none", "--out", "{d}/o.jsonl"], "not a directory"),
        (
            [
                "generic",
                "{d}/none.csv",
                "--map",
                "user_id=a,item_id=b,ts=c",
                "--action",
                "click",
                "--out",
                "{d}/o.jsonl",
            ],
            "no such file",
        ),
        (["generic", "{d}/x.csv", "--map", "user_id=a", "--out", "{d}/o.jsonl"], "missing"),
    ],
)
def test_cli_setup_errors_are_one_line(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(*(a.format(d=tmp_path) for a in args)) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
