"""Offline stand-ins for external services: the local server's Batch API (batches.py)."""
