"""The contracts between components: what goes over the wire and onto disk.

The event contract of lum.events (``events``), stable integer ids (``ids``), the sequence
record layout of the store (``records``), sample blocks on lum.samples and sample files
(``samples``, ``samplefile``), event-log files (``eventlog``) and dead-letter records
(``deadletters``). Nothing here talks to Kafka or RocksDB.
"""
