"""The synthetic click-stream generator: a seeded ground truth and its event stream.

- :mod:`streams.generator.world`: users, items, categories and condition-dependent tastes,
  with the ground-truth click probability ``World.click_prob(user, item, condition)``.
- :mod:`streams.generator.draws`: the random draws of a chunk of page views and the slates
  (distinct items by popularity) they map to.
- :mod:`streams.generator.stream`: page views -> impressions, delayed clicks and purchases,
  drift and malformed records (:mod:`~streams.generator.malformed`), in event-time order.
- :mod:`streams.generator.batch`: a chunk as columns, encoded as :class:`Event` objects or
  pre-encoded Kafka records (the fast path).
- :mod:`streams.generator.pacing`: a token bucket for producing at a target rate.
- :mod:`streams.generator.pump`: the stream written to an event log or a topic, paced,
  time-bounded and stoppable (:func:`~streams.generator.pump.generate`, ``lumstream
  generate``).

docs/generator.md explains what is learnable and why a condition-aware model wins.

Example:
    >>> from streams.config import GeneratorConfig
    >>> stream = ClickStream(GeneratorConfig(users=50, items=200, categories=4, events=5))
    >>> [type(e).__name__ for e in stream.events()]
    ['Event', 'Event', 'Event', 'Event', 'Event']
"""

from streams.generator.batch import ACTIONS, Batch
from streams.generator.malformed import EXPECTED_REASON, Malformed
from streams.generator.stream import ClickStream, StreamStats
from streams.generator.world import World

__all__ = [
    "ACTIONS",
    "EXPECTED_REASON",
    "Batch",
    "ClickStream",
    "Malformed",
    "StreamStats",
    "World",
]
