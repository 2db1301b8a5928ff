"""Plumbing shared by every user of an LLM API: the Batch API backend (batch.py, batch_journal.py)."""
