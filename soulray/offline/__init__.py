"""Model-free answers of the local OpenAI-compatible server (soulray/rewrite/server.py) for the calls
that are not rewrites: here the persona profile, the quality gate's rating and its revision (gate.py).
Deterministic from the prompt and the request's seed, for plumbing, demos, tests and benchmarks; the
figures they produce say nothing about a model."""
