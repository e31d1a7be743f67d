"""The run layer: what every command shares, and nothing model- or stage-specific.

- :mod:`genlip.run.config`: the one strict loader for recipes, sweep grids and pipeline configs;
- :mod:`genlip.run.resources`: bundled recipes and configs, found by name;
- :mod:`genlip.run.checkpoint`: run directories, atomic checkpoints, resume, what a run reached;
- :mod:`genlip.run.dist`: distributed set-up (torchrun / DeepSpeed launchers, DDP / FSDP2);
- :mod:`genlip.run.runtime`: CPU runtime settings (the allocator);
- :mod:`genlip.run.dirs`: generated-data directories under ``$GENLIP_HOME``.

Pretraining (:mod:`genlip.train`), the MLLM harness (:mod:`mllm`), evaluation (:mod:`eval`) and the tools use it;
it imports none of them.
"""
