"""What every trainer shares: atomic checkpoints, CSV logs, progress lines, learning curves."""
