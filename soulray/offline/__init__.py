"""A local OpenAI-compatible server for demos, tests and benchmarks (`soulray serve-llm`, and what
`rewrite.base_url: local` starts): model-free answers that behave like a real provider where it
matters (limits, 429s, faults). Not on the product path: nothing here is a model.

    server.py      the HTTP server, its simulated keys and limiter, the offline rewriter, injected faults
    evaluation.py  its answers to the evaluation's requests: judge ratings and next counselor turns
    gate.py        its answers to the persona's profile call and the quality gate's rating and revision
    batches.py     its Batch API (/v1/files, /v1/batches) on a simulated clock, with expiries and queue limits
"""
