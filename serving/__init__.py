"""lumstream serving package."""
