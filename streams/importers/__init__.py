"""Importers: archived data (MovieLens, generic CSV / JSONL / Parquet logs) -> events.

See docs/importers.md. Each importer feeds an :class:`streams.importers.rows.ImportRun`,
which validates every event against the contract, writes it to a sink (an event-log file
or Kafka) and reports bad rows as ``file:line: reason: detail``.
"""
