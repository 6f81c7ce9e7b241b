"""lumstream streams package."""
