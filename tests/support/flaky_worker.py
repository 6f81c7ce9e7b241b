"""``lumstream`` in a child process whose producer flush fails once, then its metrics.

    python tests/support/flaky_worker.py FAIL_AT METRICS_JSON -- lumstream arguments...

The ``FAIL_AT``-th ``Producer.flush`` call of the process flushes and then raises
ProduceError anyway (records that reached the broker but were reported lost: the worker
must re-process the batch, and the re-sent samples carry the same (partition, seq)).
After the command returns, the worker metrics the tests look at are written to
``METRICS_JSON``: ``{"failures": n, "lag": {partition: records}}``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import streams.kafka.producer as kp
from lumstream.cli import main
from monitoring.metrics import default_metrics


def run(fail_at: int, out: Path, argv: list[str]) -> int:
    real = kp.Producer.flush
    calls = {"n": 0}

    def flaky(self: kp.Producer, timeout_s: float | None = None) -> None:
        calls["n"] += 1
        real(self, timeout_s)
        if calls["n"] == fail_at:
            raise kp.ProduceError("injected: reported lost after the flush")

    kp.Producer.flush = flaky  # type: ignore[method-assign]
    try:
        return main(argv)
    finally:
        registry = default_metrics().registry
        lag: dict[str, Any] = {}
        for metric in registry.collect():
            for sample in metric.samples:
                if sample.name == "lumstream_worker_consumer_lag":
                    lag[sample.labels["partition"]] = sample.value
        failures = registry.get_sample_value("lumstream_worker_batch_failures_total") or 0
        out.write_bytes(orjson.dumps({"failures": failures, "lag": lag, "flushes": calls["n"]}))


if __name__ == "__main__":
    fail_at, out, sep, *rest = sys.argv[1:]
    assert sep == "--", "usage: flaky_worker.py FAIL_AT METRICS_JSON -- lumstream args"
    sys.exit(run(int(fail_at), Path(out), rest))
