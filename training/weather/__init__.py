"""Adverse weather: training batches, losses, the held-out test set, training, evaluation, the dark channel prior baseline."""
