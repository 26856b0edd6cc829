"""The bench's fine-tuning loop: every optimiser step is a random sample of the records, not a length bucket."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tive.bench import model as bench_model


class _Recorder(torch.nn.Module):
    """A stand-in language model that records the lengths of the records in each batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(8, 4)
        self.head = torch.nn.Linear(4, 8)
        self.lengths: list[list[int]] = []

    def forward(self, input_ids, attention_mask, **_):
        self.lengths.append(attention_mask.sum(dim=1).tolist())
        return SimpleNamespace(logits=self.head(self.embed(input_ids)))


def _item(length: int) -> dict[str, torch.Tensor]:
    ids = torch.full((length,), 3)
    labels = torch.full((length,), -100)
    labels[-1] = 3
    return {"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long), "labels": labels}


def _train(model, items, steps: int, micro: int) -> list[float]:
    processor = SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0, eos_token_id=0))
    return bench_model.train_model(model, processor, items, steps=steps, batch_size=32, learning_rate=1e-3, seed=0,
                                   freeze_vision=True, micro_batch_size=micro)


def test_each_step_mixes_record_lengths_because_lengths_follow_the_answers() -> None:
    # "yes" is one token longer than "no": a loop that batches by length gives one answer per step. 64 records of
    # each length in 8 steps of 32: sorted batches would each hold a single length; random ones almost never do.
    items = [_item(5) for _ in range(64)] + [_item(6) for _ in range(64)]
    recorder = _Recorder()
    losses = _train(recorder, items, steps=8, micro=8)
    assert len(losses) == 8 and len(recorder.lengths) == 8 * 4  # 4 micro-batches of 8 per step
    steps = [sum(recorder.lengths[4 * k : 4 * k + 4], []) for k in range(8)]
    assert all(set(step) == {5, 6} for step in steps), steps
    assert all(step == sorted(step) for step in steps)  # within a step, micro-batches go short to long
    assert sorted(n for step in steps[:4] for n in step) == [5] * 64 + [6] * 64  # one pass: each record once


def test_micro_batches_give_the_gradient_of_the_whole_batch() -> None:
    items = [_item(3 + i % 4) for i in range(96)]
    whole, micro = _Recorder(), _Recorder()
    micro.load_state_dict(whole.state_dict())
    assert _train(whole, items, steps=3, micro=32) == pytest.approx(_train(micro, items, steps=3, micro=5), rel=1e-5)
    for a, b in zip(whole.parameters(), micro.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_random_batches_partition_the_records_in_a_seeded_order() -> None:
    first = bench_model._random_batches(70, 32, torch.Generator().manual_seed(1))
    again = bench_model._random_batches(70, 32, torch.Generator().manual_seed(1))
    other = bench_model._random_batches(70, 32, torch.Generator().manual_seed(2))
    assert [len(b) for b in first] == [32, 32, 6]
    assert sorted(i for b in first for i in b) == list(range(70))
    assert first == again and first != other


def test_after_step_sees_every_step_in_training_mode_and_changes_nothing() -> None:
    """`after_step` is called once per optimiser step, after it, with the step's number; a callback that puts the
    model in eval mode (as scoring does) leaves the next step training, and the losses equal a run without it."""
    items = [_item(n) for n in (3, 5, 7, 9) * 8]
    torch.manual_seed(0)
    plain = _train(_Recorder(), items, steps=3, micro=8)
    seen: list[tuple[int, bool]] = []
    torch.manual_seed(0)
    model = _Recorder()  # the same initial weights as the plain run's

    def score(step: int) -> None:
        seen.append((step, model.training))
        model.eval()

    processor = SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0, eos_token_id=0))
    losses = bench_model.train_model(model, processor, items, steps=3, batch_size=32, learning_rate=1e-3, seed=0,
                                     freeze_vision=True, micro_batch_size=8, after_step=score)
    assert seen == [(1, True), (2, True), (3, True)]
    assert losses == pytest.approx(plain)
