"""Where records go, one module per kind: events (log files or a topic), samples (a topic
or a sample file) and dead letters (a topic or a JSONL file). Each module owns its protocol
and its implementations.
"""
