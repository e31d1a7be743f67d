"""Test helper: which dtypes the matmuls of a piece of code really run in, and how many operators it dispatches."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class MatmulDtypes(TorchDispatchMode):
    """Records the input dtypes of every matmul dispatched inside it (``seen``: one tuple per matmul) and counts
    every operator (``n_ops``)."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.n_ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n_ops += 1
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default):
            self.seen.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
        return func(*args, **(kwargs or {}))
