"""The OpenAI-compatible API plumbing shared by the rewrite, the judge and evaluation: keys, limits, prices."""
