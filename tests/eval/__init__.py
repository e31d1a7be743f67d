"""Specifications of the eval package: lmms-eval, statistics, sweeps, reports, the pipeline."""
