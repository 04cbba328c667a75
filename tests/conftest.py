import os

import pytest
import torch

# Tests are deterministic and small; two threads is this machine's size and avoids oversubscription.
torch.set_num_threads(int(os.environ.get("REVSEARCH_TEST_THREADS", "2")))

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture
def shared_data_dir():
    path = os.path.abspath(os.environ.get("REVSEARCH_SHARED_DATA", SHARED_DATA))
    if not os.path.isdir(path):
        pytest.skip("../shared/data is not present")
    return path
