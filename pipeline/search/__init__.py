"""Search: the embedding API (`inference`), feature extraction over shards and collections (`features`),
the index (`index`) and the search page (`webapp`) (docs/SEARCH.md)."""
