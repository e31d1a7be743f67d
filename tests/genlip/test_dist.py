"""Process-group set-up: the backends a GPU run gets, and the group of one that single-process FSDP2 runs on."""

import pytest
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


@pytest.mark.parametrize("ws", [1, 2])
def test_a_rank_whose_peer_died_says_so_in_one_line(monkeypatch, capsys, ws):
    """Under torchrun a rank that stops with its one-line error leaves the others in a collective that fails with
    gloo's 'Connection closed by peer' traceback (found by a user); they say what happened in one line instead.
    Alone, or for any other RuntimeError, the error keeps its traceback (a bug is a bug)."""
    from genlip.run.command import execute

    monkeypatch.setenv("WORLD_SIZE", str(ws))
    monkeypatch.setenv("RANK", "0")

    def gone(_):
        raise RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:6572. This is "
                           "typically caused by a remote worker crashing.")

    if ws == 2:
        assert execute("genlip-pretrain", gone, None, ()) == 1
        assert capsys.readouterr().err == ("genlip-pretrain: rank 0 stopped: another process of this run ended first "
                                           "(its message is above)\n")
    else:
        with pytest.raises(RuntimeError, match="closed by peer"):
            execute("genlip-pretrain", gone, None, ())

    def bug(_):
        raise RuntimeError("shape mismatch")

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        execute("genlip-pretrain", bug, None, ())


def test_ctrl_c_outside_the_training_loop_is_one_line_and_130(capsys):
    """Ctrl-C while a run sets up (or a second one while it saves) was KeyboardInterrupt's traceback (found by a
    user); the first Ctrl-C in the loop saves and returns 130 by itself."""
    from genlip.run.command import execute

    def setting_up(_):
        raise KeyboardInterrupt

    assert execute("genlip-pretrain", setting_up, None, ()) == 130
    assert capsys.readouterr().err.strip() == ("genlip-pretrain: interrupted, without saving (a run continues from "
                                               "its last checkpoint: give the same command again)")
