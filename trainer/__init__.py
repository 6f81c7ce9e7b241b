"""lumstream trainer package."""
