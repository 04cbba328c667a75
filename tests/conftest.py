import os

import pytest
import torch

# Tests are small: one thread is as fast and avoids OpenMP spin-waits when the machine is shared.
torch.set_num_threads(int(os.environ.get("REVSEARCH_TEST_THREADS", "1")))



@pytest.fixture(autouse=True)
def restore_thread_count():
    """A test that changes torch's thread count (a benchmark smoke test, a precision check) leaves the
    next one the suite's setting."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture
def shared_data_dir():
    path = os.path.abspath(os.environ.get("REVSEARCH_SHARED_DATA", SHARED_DATA))
    if not os.path.isdir(path):
        pytest.skip("../shared/data is not present")
    return path
