"""lumstream monitoring package."""
