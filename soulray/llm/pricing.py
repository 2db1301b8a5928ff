"""What a call costs, from the configured list prices (USD per 1,000 tokens, `rewrite.prices`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from soulray.llm.settings import BatchModeConfig, Price


def cost_of(prices: Mapping[str, Price], model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """USD for these tokens; 0 for a model without a price (a local or self-hosted endpoint)."""
    price = prices.get(model)
    if price is None:
        return 0.0
    return prompt_tokens / 1000 * price.prompt_per_1k + completion_tokens / 1000 * price.completion_per_1k


def batch_price(prices: Mapping[str, Price], batch: BatchModeConfig) -> Callable[[str, int, int], float]:
    """USD of a Batch API completion: the configured batch price of its model, else price_factor × `prices`."""

    def price(model: str, prompt_tokens: int, completion_tokens: int) -> float:
        if model in batch.prices:
            return cost_of(batch.prices, model, prompt_tokens, completion_tokens)
        return batch.price_factor * cost_of(prices, model, prompt_tokens, completion_tokens)

    return price
