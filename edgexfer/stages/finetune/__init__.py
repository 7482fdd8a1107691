"""The finetune stage: a torchvision classifier, its head replaced, trained on your images.

``run_finetune(FinetuneConfig)`` loads the data (:mod:`edgexfer.data`), builds the model and loads
weights (:mod:`edgexfer.models`), freezes per strategy, trains (:mod:`edgexfer.training`), and writes
into ``<run>/finetune/``: ``best.pt`` (best val top-1) and ``last.pt`` (for ``--resume``),
``metrics.json`` and ``curves.png``, all recorded in the manifest. Under torchrun only rank 0 writes.

- :mod:`~edgexfer.stages.finetune.config`: :class:`FinetuneConfig` and :class:`FinetuneResult`.
- :mod:`~edgexfer.stages.finetune.inputs`: the run folder, data, model, ``--weights``, preprocessing.
- :mod:`~edgexfer.stages.finetune.run`: :func:`run_finetune`: train, then record in the manifest.
"""

from edgexfer.stages.finetune.config import STAGE, STRATEGY_DEFAULTS, FinetuneConfig, FinetuneResult
from edgexfer.stages.finetune.inputs import check_run_dir, choose_preprocess, load_weights
from edgexfer.stages.finetune.run import FinetuneRun, run_finetune

__all__ = [
    "STAGE",
    "STRATEGY_DEFAULTS",
    "FinetuneConfig",
    "FinetuneResult",
    "FinetuneRun",
    "check_run_dir",
    "choose_preprocess",
    "load_weights",
    "run_finetune",
]
