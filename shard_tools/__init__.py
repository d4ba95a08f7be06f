"""make-shards: pack video and image datasets into WebDataset tar shards with pre-sampled JPEG frames.

Library entry point: `shard_tools.api.make_shards` (docs/SHARDS.md). The package imports no torch.
"""

__version__ = "0.1.0"
