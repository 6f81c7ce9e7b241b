"""Helpers shared by the tests (data builders, paths); ``tests/`` is on ``sys.path``."""
