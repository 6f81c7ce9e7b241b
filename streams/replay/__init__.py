"""Replaying archived events: sources (event-log files, a Kafka topic's time range), the
*produce* mode (re-produce into a topic) and the *backfill* mode (straight into a store by
the worker's own code).
"""
