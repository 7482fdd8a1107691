"""A run directory holding a seeded random-weight checkpoint: what latency benchmarks and tests start from.

Latency does not depend on the weights' values, so ``edgexfer bench``, ``benchmarks/bench_backends.py``
and the tests make their models this way instead of fine-tuning. The run directory looks like one
``edgexfer finetune`` made (``finetune/best.pt`` recorded as ``checkpoint``), so every later stage
takes it; its accuracy is meaningless and its records say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

WEIGHTS_NOTE = "random initialisation"


def write_random_run(
    run_dir: "Path | str", arch: str, class_names: Sequence[str], preprocess: Any, seed: int = 0
) -> Path:
    """Write ``run_dir/finetune/best.pt`` (``arch`` with one output per class, weights from ``seed``) and
    record it in ``run_dir``'s manifest as the finetune stage's checkpoint; return ``run_dir``."""
    from edgexfer.torchdeps import require_torch

    require_torch(f"a random-weight {arch} (bench --model)")
    import torch

    from edgexfer.checkpoint import CheckpointMeta, save_checkpoint
    from edgexfer.manifest import Manifest
    from edgexfer.models import build_model, check_model_name

    check_model_name(arch)
    run_dir = Path(run_dir)
    torch.manual_seed(seed)
    model = build_model(arch, len(class_names)).eval()
    meta = CheckpointMeta(
        arch=arch, class_names=list(class_names), preprocess=preprocess, weights_source=WEIGHTS_NOTE
    )
    checkpoint = run_dir / "finetune" / "best.pt"
    save_checkpoint(checkpoint, model.state_dict(), meta)
    config = {"arch": arch, "class_names": list(class_names), "weights": "random", "seed": seed}
    with Manifest.update(run_dir, create=True) as manifest:
        manifest.add_artifact("checkpoint", checkpoint, kind="checkpoint", stage="finetune", config=config)
        manifest.record_stage("finetune", config)
    return run_dir
