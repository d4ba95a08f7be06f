"""Training: the run config, distributed set-up, the DeepSpeed trainer, checkpoints (save, resume, prune,
export, load), evaluation with its retrieval metrics, and TensorBoard (docs/TRAINING.md)."""
