"""Data position and the optimizer step, without Ray: the gradient of a global batch does not depend on
how it is split into workers and micro-batches."""

from __future__ import annotations

import numpy as np
import pytest

from soulray.train.loop import global_batch, train_step, worker_micro_batches
from soulray.train.model import tiny_model
from soulray.train.prepare import _encoder
from soulray.train.samples import SampleStore, plan_samples, tokenize_dialogues
from soulray.train.settings import TinyModelConfig


def test_every_sample_once_per_epoch_and_a_deterministic_order():
    steps = [global_batch(step, batch_size=8, samples=20, seed=1) for step in range(5)]  # 40 = two epochs
    flat = np.concatenate(steps)
    assert sorted(flat[:20]) == list(range(20)) and sorted(flat[20:]) == list(range(20))
    assert np.array_equal(global_batch(3, batch_size=8, samples=20, seed=1), steps[3])  # resume = same batch
    assert not np.array_equal(global_batch(0, batch_size=8, samples=20, seed=2), steps[0])


@pytest.fixture(scope="module")
def store(smilechat, small_tokenizer):
    tokens = tokenize_dialogues(smilechat.slice(0, 20), encode_batch=_encoder(small_tokenizer),
                                eos_id=small_tokenizer.eos_token_id)
    return SampleStore.from_tables(tokens, plan_samples(tokens, mode="per_turn", max_input=64, max_output=32))


def test_worker_shares_partition_the_global_batch(store):
    indices = global_batch(0, batch_size=8, samples=len(store), seed=0)
    shares = [worker_micro_batches(indices, rank=rank, world=2, micro_batch_size=2, store=store) for rank in (0, 1)]
    assert all(len(share) == 2 for share in shares)  # 8 = 2 workers × 2 micro-batches × 2 samples
    assert sorted(np.concatenate([m for share in shares for m in share])) == sorted(indices)


def gradients_after(store, tokenizer, indices, *, rank, world, micro_batch_size):
    import torch

    model = tiny_model(TinyModelConfig(), vocab_size=len(tokenizer), max_positions=128, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # keep the weights; read the gradients
    totals = train_step(model=model, optimizer=optimizer, store=store,
                        micro_batches=worker_micro_batches(indices, rank=rank, world=world,
                                                           micro_batch_size=micro_batch_size, store=store),
                        global_supervised=store.supervised_tokens(indices), world=world,
                        pad_id=tokenizer.pad_token_id, grad_clip=1e9, device="cpu")
    return [p.grad.clone() for p in model.parameters()], totals


def test_gradient_is_the_global_token_mean_whatever_the_split(store, small_tokenizer):
    indices = global_batch(0, batch_size=8, samples=len(store), seed=0)
    whole, totals = gradients_after(store, small_tokenizer, indices, rank=0, world=1, micro_batch_size=8)
    accumulated, _ = gradients_after(store, small_tokenizer, indices, rank=0, world=1, micro_batch_size=1)
    # two workers: DDP averages what each computed on its share
    shares = [gradients_after(store, small_tokenizer, indices, rank=rank, world=2, micro_batch_size=2)[0]
              for rank in (0, 1)]
    averaged = [(a + b) / 2 for a, b in zip(*shares, strict=True)]
    for reference, other, ddp in zip(whole, accumulated, averaged, strict=True):
        assert np.allclose(reference.numpy(), other.numpy(), atol=1e-6)
        assert np.allclose(reference.numpy(), ddp.numpy(), atol=1e-6)
    assert totals.supervised == store.supervised_tokens(indices) > 0
    assert totals.loss_sum / totals.supervised == pytest.approx(np.log(len(small_tokenizer)), rel=0.05)
