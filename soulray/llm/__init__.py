"""The way to an OpenAI-compatible API, shared by every stage that calls one (the rewrite, the
evaluation's endpoint models and its judge).

    client.py   LLMCaller: one actor's calls (reservations, retries, cache, accounting) and the one
                re-ask loop, `ask`, that every user's parser drives
    broker.py   the cluster-wide quota broker: per-key and per-model limits, budget, learned max_tokens
    cache.py    the response cache: paid answers by call key, journals compacted between runs
    session.py  what the driver sets up around the calls of one run (endpoint, broker, cache index)
    tokens.py   token counts without a download, and the estimate a reservation holds before a call
    pricing.py  what a call costs, from the configured prices
    settings.py keys, limits, prices, the local server, and what a kind of call sends (CallConfig)
    batch.py    the Batch API backend: submit, track, download, settle (BatchDriver), `soulray batches`
    batch_journal.py  what the batch driver did, written first, so a killed run resumes
Nothing here imports soulray.rewrite or soulray.evaluate: they use it, with their own prompts and parsers.
"""
