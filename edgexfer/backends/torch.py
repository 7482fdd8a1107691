"""The torch backend: the eager float model, the reference every other backend is compared with.

It has nothing to build: its artifact is the edgexfer checkpoint itself (``finetune/best.pt``), which
:meth:`TorchBackend.load` turns into a runner. :class:`TorchRunner` can also wrap a model in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from edgexfer.backends.base import Backend, BuildResult, Runner
from edgexfer.backends.common import as_logits, check_batch
from edgexfer.errors import BackendUnavailableError, ConfigError


class TorchRunner(Runner):
    """Eager-mode inference of a torch ``nn.Module`` on float32 NCHW batches.

    ``threads``: torch intra-op threads while active (restored afterwards), default physical cores.
    ``device``: 'cpu' or 'cuda[:N]'.
    """

    name = "torch"
    input_dtype = np.float32
    input_layout = "NCHW"

    def __init__(
        self,
        model: Any,
        device: str = "cpu",
        threads: Optional[int] = None,
        input_size: Optional[int] = None,
        source: str = "model in memory",
    ):
        self.model = model
        self.device = device
        self.threads = threads
        self.input_size = input_size
        self.source = source
        self._saved_threads: Optional[int] = None

    def activate(self) -> None:
        """Move the model to its device in eval mode and pin the thread count."""
        import torch

        from edgexfer.hardware import physical_cores

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"torch runner asked for device '{self.device}' but torch has no CUDA here; use device 'cpu'"
            )
        self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads or physical_cores())
        self.model = self.model.to(self.device).eval()

    def deactivate(self) -> None:
        """Restore torch's thread count."""
        import torch

        if self._saved_threads:
            torch.set_num_threads(self._saved_threads)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW batch -> float32 logits."""
        import torch

        size = (self.input_size, self.input_size) if self.input_size else (None, None)
        array = check_batch(batch, np.float32, "NCHW", size, "the torch model")
        with torch.inference_mode():
            output = self.model(torch.from_numpy(array).to(self.device))
        return as_logits(output.float().cpu().numpy(), array.shape[0], "the torch model")

    def describe(self) -> Dict[str, Any]:
        """Runner facts plus device, threads and torch version."""
        import torch

        facts = super().describe()
        facts.update(
            {
                "device": self.device,
                "threads": self.threads or torch.get_num_threads(),
                "torch": torch.__version__,
                "source": self.source,
            }
        )
        return facts


class TorchBackend(Backend):
    """The eager torch model from an edgexfer checkpoint (float32 only: it is the reference)."""

    name = "torch"
    precisions = ("fp32",)
    suffixes = (".pt", ".pth")

    def availability(self) -> Tuple[bool, str]:
        """torch and torchvision import (the ``train`` extra; a device runtime goes without them)."""
        from edgexfer.torchdeps import TRAIN_EXTRA, torch_missing

        missing = torch_missing()
        if missing is not None:
            return False, f"{missing}; {TRAIN_EXTRA}"
        import torch

        cuda = "CUDA available" if torch.cuda.is_available() else "CPU only"
        return True, f"torch {torch.__version__} ({cuda})"

    def build(
        self, onnx_path: Path, precision: str, out_dir: Path, options: Optional[Dict[str, Any]] = None
    ) -> BuildResult:
        """Nothing to build: the torch reference runs the checkpoint directly."""
        raise ConfigError(
            "backend 'torch' has nothing to build (it runs the checkpoint as the reference); "
            "build with --backend onnxruntime, tensorrt or openvino"
        )

    def load(self, artifact_path: Path, options: Optional[Dict[str, Any]] = None) -> Runner:
        """Rebuild the model from an edgexfer checkpoint. Options: device, threads."""
        from edgexfer.checkpoint import load_checkpoint

        options = dict(options or {})
        model, meta = load_checkpoint(artifact_path)
        return TorchRunner(
            model,
            device=str(options.get("device", "cpu")),
            threads=options.get("threads"),
            input_size=meta.preprocess.size,
            source=str(artifact_path),
        )
