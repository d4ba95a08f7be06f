"""Streaming data pipeline, trainer and search for Frozen-in-Time style video-text retrieval.

Importing this package stays light (no torch): shard_tools uses its small utilities.
"""
__version__ = "0.1.0"
