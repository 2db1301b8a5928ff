"""The rewrite stage: single-turn Q&A → multi-turn empathetic dialogue through an OpenAI-compatible API."""
