"""lumstream embeddings package."""
