"""The machinery of ``edgexfer finetune``, free of stages and manifests.

- :mod:`~edgexfer.training.runtime`: device, AMP, memory format, seeding, DDP.
- :mod:`~edgexfer.training.loop`: loaders, one pass of training or evaluation (flat functions).
- :mod:`~edgexfer.training.features`: the linear strategy's feature cache and head-only passes.
- :mod:`~edgexfer.training.optim`: parameter groups, the optimizer, the warmup + cosine schedule.
- :mod:`~edgexfer.training.precise_bn`: BatchNorm statistics recomputed before validation (``--precise-bn``).
- :mod:`~edgexfer.training.collapse`: the one-line diagnosis of validation at chance.
- :mod:`~edgexfer.training.engines`: the two ways an epoch runs (images, or cached features).
- :mod:`~edgexfer.training.trainer`: the epoch loop with its optimizer, schedule and early stopping.
- :mod:`~edgexfer.training.state`: history, early-stopping bookkeeping and the generators' states.
- :mod:`~edgexfer.training.checkpoints`: ``best.pt`` / ``last.pt`` / ``metrics.json`` and ``--resume``.
- :mod:`~edgexfer.training.report`: ``metrics.json`` and the curves plot.

:mod:`edgexfer.stages.finetune` puts them together and records the run in the manifest.
"""
