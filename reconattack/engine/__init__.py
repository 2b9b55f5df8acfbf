"""The engine: the services every run uses, below the commands and above the science.

- :mod:`~reconattack.engine.runner` — the one runner (SPEC §7): threat → attack stages →
  evaluation → metrics;
- :mod:`~reconattack.engine.context` — one run's services (:class:`RunContext`: trainers, the
  metrics callback, the logger, the artifact store, ``metrics.json``);
- :mod:`~reconattack.engine.resume` — continuing a stopped run (checkpoints, RNG state,
  preemption signals);
- :mod:`~reconattack.engine.artifacts` — content-addressed artifacts shared between runs;
- :mod:`~reconattack.engine.tracking` — what a run shows on W&B / TensorBoard;
- :mod:`~reconattack.engine.console` — what a run prints;
- :mod:`~reconattack.engine.sweeps` — multiruns in which a failed job does not stop the others;
- :mod:`~reconattack.engine.recipes` — the paper tables' reproduction recipes (``experiments/``).

The commands (``python -m reconattack.run | profile | report``) sit above it; threats, attacks,
data, models, losses and metrics below it never import it (a threat is handed the run's
:class:`~reconattack.engine.context.RunContext`).
"""
