"""A tiny serving process for the kill test: logs served lists through ServedLog.

    python tests/support/served_driver.py SPOOL BOOTSTRAP TOPIC START COUNT PAUSE_S

Logs the lists ``req-START`` .. ``req-(START+COUNT-1)`` (user ``u<i % 7>``, three items)
and prints ``served <i>`` after each ``log`` returned (the list is then "reported
served", as a response would be sent). Then it waits until the spool is shipped, closes
the log and prints ``drained``. The kill test SIGKILLs it in the middle.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prometheus_client import CollectorRegistry

from monitoring.metrics import Metrics
from serving.loop_config import ServedLogConfig
from serving.served_log import ServedList, ServedLog
from streams.config import EventConfig, KafkaConfig

ITEMS = 3


def served_list(i: int) -> ServedList:
    return ServedList(
        request_id=f"req-{i}",
        user_id=f"u{i % 7}",
        condition="home",
        items=[f"item-{(i * 31 + p) % 97}" for p in range(ITEMS)],
        ranker_version="r1",
    )


def main(argv: list[str]) -> int:
    spool, bootstrap, topic, start, count, pause = argv
    kafka = KafkaConfig(bootstrap_servers=bootstrap, topic_events=topic)
    # small shipping rounds: many acknowledged positions, so a kill lands between them
    cfg = ServedLogConfig(ship_batch_bytes=2048, ship_interval_s=0.005, drain_s=10.0)
    metrics = Metrics(CollectorRegistry())
    with ServedLog(cfg, Path(spool), kafka, bootstrap, EventConfig(), metrics=metrics) as log:
        for i in range(int(start), int(start) + int(count)):
            if log.log(served_list(i)):
                print(f"served {i}", flush=True)
            time.sleep(float(pause))
        if not log.wait_shipped(30):
            print("not drained", flush=True)
            return 1
    print("drained", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
