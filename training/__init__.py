"""The trainer's parts: config composition, datasets, schedules, checkpoints, run logging."""
