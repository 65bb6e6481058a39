"""utils.distributed inside a real (one-process gloo) process group: the
collectives run and give the values of the only rank."""

import pytest
import torch

from speechbrain_mamba.utils.distributed import (
    all_reduce_sum,
    any_rank,
    is_distributed,
)


@pytest.fixture
def process_group(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group(
        "gloo", store=store, rank=0, world_size=1
    )
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def test_collectives_in_a_process_group(process_group):
    assert is_distributed()
    assert any_rank(True) is True
    assert any_rank(False) is False
    counts = torch.tensor([3.0, 4.0])
    assert all_reduce_sum(counts) is counts
    assert counts.tolist() == [3.0, 4.0]


def test_without_a_group_values_come_back():
    assert not is_distributed()
    assert any_rank(True) and not any_rank(False)
    values = torch.tensor([5])
    assert all_reduce_sum(values).tolist() == [5]
