"""The step sampler: data order is a function of (seed, step), split alike over processes."""

import itertools

from fp4train.lit import StepSampler


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_two_ranks_see_the_same_global_batches_as_one_process():
    one = take(StepSampler(50, micro_batch=8, seed=3), 8 * 10)
    r0 = take(StepSampler(50, micro_batch=4, world_size=2, rank=0, seed=3), 4 * 10)
    r1 = take(StepSampler(50, micro_batch=4, world_size=2, rank=1, seed=3), 4 * 10)
    for step in range(10):
        assert one[8 * step : 8 * step + 8] == r0[4 * step : 4 * step + 4] + r1[4 * step : 4 * step + 4]


def test_starting_at_a_micro_batch_continues_the_uninterrupted_order():
    full = take(StepSampler(30, micro_batch=4, seed=1), 4 * 20)
    resumed = take(StepSampler(30, micro_batch=4, seed=1, start=7), 4 * 13)
    assert resumed == full[4 * 7 :]


def test_each_epoch_is_a_fresh_permutation_of_the_dataset():
    order = take(StepSampler(12, micro_batch=4, seed=0), 36)
    epochs = [order[i : i + 12] for i in (0, 12, 24)]
    assert all(sorted(e) == list(range(12)) for e in epochs)
    assert epochs[0] != epochs[1]
