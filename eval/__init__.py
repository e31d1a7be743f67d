"""Benchmark suites, lmms-eval integration, sweeps and comparison reports (depends on ``mllm`` and ``genlip``)."""
