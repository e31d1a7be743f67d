"""Specifications of the genlip package: model, data, pretraining, the run layer, tools."""
