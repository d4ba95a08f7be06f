"""The streaming loader: shard lists -> tar samples -> T of K frames, one augmentation per clip -> batches.

`loader` builds the DataLoaders (docs/LOADER.md); `options` holds the config sections it reads and imports
no torch.
"""
