import pytest

from posttrain.config import ConfigError
from posttrain.training.loop import micro_batches, plan_steps, step_indices


def test_plan_steps():
    assert plan_steps(20, 8, 1.0, None) == (2, 2)
    assert plan_steps(20, 8, 2.5, None) == (2, 5)
    assert plan_steps(20, 8, 1.0, 7) == (2, 7)
    with pytest.raises(ConfigError, match="fewer than optim.batch_size"):
        plan_steps(3, 8, 1.0, None)


def test_step_indices_are_a_pure_function_of_the_step():
    kw = dict(num_items=20, batch_size=8, steps_per_epoch=2, seed=1, shuffle=True)
    a = [step_indices(s, **kw) for s in range(4)]
    assert a == [step_indices(s, **kw) for s in range(4)]
    assert len(set(a[0]) | set(a[1])) == 16  # no repeats inside an epoch
    assert a[0] != a[2]  # a new order each epoch
    assert step_indices(1, **{**kw, "shuffle": False}) == list(range(8, 16))


def test_micro_batches_shard_by_rank():
    idx = list(range(8))
    assert micro_batches(idx, rank=0, world_size=1, micro_batch_size=3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert micro_batches(idx, rank=1, world_size=2, micro_batch_size=2) == [[1, 3], [5, 7]]
