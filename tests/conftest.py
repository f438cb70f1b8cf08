import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The suite's tensors are small: thread start-up dominates, and on a 2-core machine shared
    with other processes OpenMP oversubscription stalls. Subprocesses keep torch's default."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
