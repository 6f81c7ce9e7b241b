"""lumstream lumstream package."""
