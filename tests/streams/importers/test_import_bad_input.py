"""Bad input files end in a precise error or bad-row report, never a traceback: undecodable
bytes in a CSV cell, truncated gzip logs (issue 17, item 7)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from lumstream.cli import main
from streams.contracts.eventlog import CorruptFile, iter_event_log


def cli(*args: str) -> int:
    return main(["--set", "metrics.enabled=false", *args])


def test_undecodable_cells_without_an_event_id_column_are_bad_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "badenc.csv"
    src.write_bytes(
        b"uid,sku,kind,time,cat\nu1,i1,view,1767229600,Books\nu\xe9\xff2,i2,view,1767229601,Toys\n"
    )
    out = tmp_path / "out.jsonl"
    code = cli(
        "import", "generic", str(src), "--out", str(out),
        "--map", "user_id=uid,item_id=sku,ts=time,action=kind",
        "--action-map", "view=impression,cart=click", "--ts-unit", "s",
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    assert f"{src}:3: non_utf8: user_id: not valid UTF-8" in captured.err
    assert len(list(iter_event_log(out))) == 1  # the good row


def _truncated_gz(path: Path, lines: list[bytes]) -> None:
    whole = gzip.compress(b"".join(line + b"\n" for line in lines))
    path.write_bytes(whole[: len(whole) * 2 // 3])


def test_a_truncated_gzip_event_log_is_a_precise_error(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl.gz"
    _truncated_gz(path, [b'{"n": %d, "pad": "%s"}' % (i, b"x" * 50) for i in range(2000)])
    with pytest.raises(CorruptFile, match=r"events\.jsonl\.gz: truncated or corrupt .* after line"):
        list(iter_event_log(path))


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".csv.gz"])
def test_import_of_a_truncated_gzip_log_says_so_in_one_line(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / f"log{suffix}"
    if suffix == ".csv.gz":
        rows = [b"uid,sku,time"] + [b"u%d,i%d,%d" % (i, i, 1767229600 + i) for i in range(5000)]
    else:
        rows = [
            b'{"uid":"u%d","sku":"i%d","time":%d}' % (i, i, 1767229600 + i) for i in range(5000)
        ]
    _truncated_gz(src, rows)
    out = tmp_path / "out.jsonl"
    code = cli(
        "import", "generic", str(src), "--out", str(out), "--map",
        "user_id=uid,item_id=sku,ts=time", "--action", "impression", "--ts-unit", "s",
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert "truncated or corrupt compressed data after line" in err
    assert not out.exists()  # a failed import leaves no partial file
