"""Process-group set-up: the backends a GPU run gets, and the group of one that single-process FSDP2 runs on."""

import torch
import torch.distributed as dist

from genlip.run import dist as D


def test_gpu_runs_get_a_cpu_backend_beside_nccl(monkeypatch):
    """The trainer all-reduces CPU scalars (supervised-token counts, the loss); NCCL alone refuses CPU tensors, so a
    multi-GPU run would stop at its first step unless CPU tensors have a backend of their own."""
    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.update(backend=backend, **kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert D.init() == torch.device("cuda", 1)
    backends = dict(part.split(":") for part in seen["backend"].split(","))
    assert backends == {"cpu": "gloo", "cuda": "nccl"} and seen["device_id"] == torch.device("cuda", 1)
    assert D.backend_for(torch.device("cpu")) == "gloo"


def test_group_of_one_needs_no_launcher_and_reduces():
    assert not dist.is_initialized()
    D.init_single(torch.device("cpu"))
    try:
        assert dist.get_world_size() == 1 and dist.get_rank() == 0
        assert D.all_reduce_sum(torch.tensor(3.0)).item() == 3.0
        assert D.all_gather_object({"a": 1}) == [{"a": 1}]
        D.init_single(torch.device("cpu"))  # a second call keeps the group
    finally:
        D.cleanup()
    assert not dist.is_initialized()
