"""Stage 4: narrative tasks over panel sequences: task sets and baselines (tasks, samplers, baselines), the
sequence model and its batches (model, batches), training (config, trainer), figures."""
