"""Training engine: stages as data, the loop, checkpoints, metrics and logging."""
