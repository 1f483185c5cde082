"""Frozen-backbone embeddings: extraction, a shared on-disk cache, writers, and the linear probe."""
