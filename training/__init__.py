"""Training, evaluation and baselines, one folder per model family (dncnn, hed, weather).

Each family's folder holds its data, losses, training command (``train``), evaluation command
(``evaluate``) and baselines; ``training.common`` holds what every trainer shares (checkpoints,
CSV logs, progress lines, learning-curve plots). Imports run one way: training -> export ->
models; ``export`` and ``models`` never import from here.
"""
