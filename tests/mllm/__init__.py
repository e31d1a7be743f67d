"""Specifications of the mllm package: the LLaVA-NeXT-style harness."""
