"""The bundled recipes, shipped inside the package as data (read with :mod:`importlib.resources`).

``genlip/``: pretraining (stage 1 and 2); ``mllm/``: alignment and instruction tuning, ``mllm/deepspeed/``: ZeRO
configs; ``pipeline/``: ``genlip-eval pipeline`` configs. Every command finds them by name from any working directory
(:mod:`genlip.resources`); a path to a file of one's own works everywhere a name does.
"""
