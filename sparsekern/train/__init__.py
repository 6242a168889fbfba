"""Training harness: the training loop, checkpoints, metrics, distributed launch and the compare sweep."""
