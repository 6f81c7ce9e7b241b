"""Where the repository and the tests are, for tests that start child processes."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
