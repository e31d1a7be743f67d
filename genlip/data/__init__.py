"""Pretraining data: readers, decoding, transforms, the generated corpus, and the data stream."""
