"""The stream worker: lum.events -> RocksDB sequences + labelled samples + dead letters.

The partition store (``store``), batch decoding (``decode``), the duplicate window
(``dedup``), the label join (``join``), the one processing path of a partition batch
(``processor``), its delivery and commit (``applier``), and the two consumer engines
(``confluent_engine``, the default, and ``faust_engine``).
"""
