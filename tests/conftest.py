import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs the files side by side (pytest-xdist, one worker per core): each worker, and the processes its
# tests start, keep to their share of the cores instead of all of them competing for every core
_share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
torch.set_num_threads(max(1, min(2, _share)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
