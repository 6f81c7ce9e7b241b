"""The Kafka cluster a command talks to, found the same way by every command.

``kafka.bootstrap_servers`` when set; else a running ``lumstream broker`` on this machine
(its run file); else an embedded broker started for the command and stopped after it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config
    from monitoring.metrics import Metrics


@contextlib.contextmanager
def cluster(cfg: Config, metrics: Metrics, *, note_if_embedded: bool = False) -> Iterator[str]:
    """Yield the bootstrap servers for the duration of the ``with`` block.

    Args:
        note_if_embedded: say on stderr when the records will go to a throwaway embedded
            broker (commands whose output should outlive them: generate, import, replay).
    """
    from streams.kafka.broker import running_broker
    from streams.kafka.cluster import bootstrap_servers

    run_file = cfg.layout.broker_run_file
    if note_if_embedded and not cfg.kafka.bootstrap_servers and running_broker(run_file) is None:
        print(
            "note: no Kafka cluster configured and no `lumstream broker` running: starting an "
            "embedded broker for this command only (in memory: its records are gone at exit)",
            file=sys.stderr,
        )
    with bootstrap_servers(
        cfg.kafka,
        cfg.broker,
        metrics=metrics,
        log_dir=cfg.layout.logs,
        run_file=run_file,
    ) as bootstrap:
        yield bootstrap
