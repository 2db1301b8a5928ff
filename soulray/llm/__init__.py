"""The way to an OpenAI-compatible API, shared by every stage that calls one (the rewrite, the
evaluation's endpoint models and its judge).

    broker.py   the cluster-wide quota broker: per-key and per-model limits, budget, learned max_tokens
    cache.py    the response cache: paid answers by call key, journals compacted between runs
    session.py  what the driver sets up around the calls of one run (endpoint, broker, cache index)
    tokens.py   token counts without a download, for reservations before a call
"""
