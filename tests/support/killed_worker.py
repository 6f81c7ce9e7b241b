"""``lumstream`` in a child process that SIGKILLs itself inside the worker's pipeline.

    python tests/support/killed_worker.py KILL_AT -- lumstream arguments...

At the ``KILL_AT``-th :meth:`BatchApplier.deliver` of the process (the confluent engine
runs it in its committer thread), the samples and dead letters of that poll are flushed
(acknowledged by the broker), then the child waits until the main thread has processed
the next poll on top of the poll's sealed, unwritten store batches, and kills itself with
SIGKILL before the store commit: the window that pipelining opens.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lumstream.cli import main
from streams.worker.applier import BatchApplier, PartitionBatch, StagedPoll

_WAIT_NEXT_S = 10.0  # the stream may end: then the kill comes without a next poll


def run(kill_at: int, argv: list[str]) -> int:
    real_process, real_deliver = BatchApplier.process_many, BatchApplier.deliver
    calls = {"process": 0, "deliver": 0}
    processed = threading.Condition()

    def process_many(self: BatchApplier, batches: list[PartitionBatch]) -> StagedPoll:
        staged = real_process(self, batches)
        with processed:
            calls["process"] += 1
            processed.notify_all()
        return staged

    def deliver(self: BatchApplier, staged: StagedPoll) -> None:
        calls["deliver"] += 1
        if calls["deliver"] == kill_at:
            with processed:
                seen = calls["process"]
            self.samples.flush()
            self.dead.flush()
            with processed:
                processed.wait_for(lambda: calls["process"] > seen, _WAIT_NEXT_S)
            sys.stderr.write(f"killed_worker: SIGKILL after flush {kill_at}\n")
            sys.stderr.flush()
            time.sleep(0.05)  # let the parent's reader see the line
            os.kill(os.getpid(), signal.SIGKILL)
        real_deliver(self, staged)

    patched: Any = BatchApplier
    patched.process_many, patched.deliver = process_many, deliver
    return main(argv)


if __name__ == "__main__":
    kill_at, sep, *rest = sys.argv[1:]
    assert sep == "--", "usage: killed_worker.py KILL_AT -- lumstream args"
    sys.exit(run(int(kill_at), rest))
