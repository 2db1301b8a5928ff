"""What a call costs, from the configured list prices (USD per 1,000 tokens, `rewrite.prices`)."""

from __future__ import annotations

from collections.abc import Mapping

from soulray.llm.settings import Price


def cost_of(prices: Mapping[str, Price], model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """USD for these tokens; 0 for a model without a price (a local or self-hosted endpoint)."""
    price = prices.get(model)
    if price is None:
        return 0.0
    return prompt_tokens / 1000 * price.prompt_per_1k + completion_tokens / 1000 * price.completion_per_1k
