"""Everything between the shards and a trained, searchable model (docs/DESIGN.md draws the layers):

- `pipeline.data`: the streaming loader (shard lists, tar reading, frame picking, transforms, batching);
- `pipeline.train`: run config, distributed set-up, trainer, checkpoints, evaluation and metrics;
- `pipeline.search`: the embedding API, feature extraction, the index and the search page;
- `pipeline.demo`: the built-in demo (data rendering and the whole run).

Imports go down that list, never up; the package itself imports nothing.
"""

__version__ = "0.1.0"
