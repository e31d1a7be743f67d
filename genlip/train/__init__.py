"""The pretraining harness: recipes, the training loop, checkpoints, distributed set-up, logging."""
