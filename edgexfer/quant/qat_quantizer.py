"""``edgexfer-qat``: edgexfer's recipe after quantization-aware training, a candidate made only when asked
(``export --int8 --qat-epochs N``).

1. edgexfer's recipe candidate for the target is made first (:class:`RecipeQuantizer`, shared with it): its
   calibration method, calibrated ranges and the layers its accuracy guard kept in float are QAT's start;
2. that QDQ model is made again from the same ranges on the pre-processed float graph with every node named
   (:func:`~edgexfer.quant.qat_graph.name_nodes`), and read into a fake-quantization plan: the very edges,
   scales and zero points the target's runtime will run;
3. the graph trains under that plan (:mod:`edgexfer.quant.qat`) on the run's training split;
4. the trained float graph is quantized by the same recipe with the same ranges (not recalibrated) and the
   same float layers, so the deployed Q/DQ is what training simulated; the competition checks the target's
   rules and scores it like every other candidate, so it is kept only when it wins on the target.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Tuple

from edgexfer.errors import ArtifactError, ConfigError
from edgexfer.quant.candidates import CandidateModel, QuantizeRequest, Quantizer
from edgexfer.quant.qat import QatSettings
from edgexfer.quant.recipe_quantizer import RecipeQuantizer
from edgexfer.quant.recipes import RECIPES, recipe_for

NAME = "edgexfer-qat"


@dataclass
class QatJob:
    """What QAT needs besides the request: how it trains, the preprocessing, the training split (loaded on use)."""

    settings: QatSettings
    preprocess: Any
    load_samples: Callable[[], Any]
    progress: bool = False


def training_split(run_dir: "os.PathLike[str] | str") -> Any:
    """The run's training split; ConfigError (one line) when the run has none (e.g. a random-weight run)."""
    from edgexfer.data import samples_for_run

    try:
        samples = samples_for_run(run_dir, "train")
    except ArtifactError as exc:
        raise ConfigError(
            f"--qat-epochs trains on the run's training split, and run '{run_dir}' has none ({exc}); "
            "run 'edgexfer finetune' for it or export without --qat-epochs"
        ) from exc
    if len(samples) == 0:
        raise ConfigError(f"--qat-epochs: the training split of run '{run_dir}' has no images")
    return samples


def qat_job(run_dir: Path, preprocess: Any, settings: QatSettings, progress: bool) -> QatJob:
    """The :class:`QatJob` of a run; the split is checked now (before anything is written), loaded on use."""
    training_split(run_dir)
    return QatJob(settings, preprocess, lambda: training_split(run_dir), progress)


class QatQuantizer(Quantizer):
    """edgexfer's recipe after quantization-aware training (torch, already a training-side dependency)."""

    name = NAME
    targets: Tuple[str, ...] = tuple(RECIPES)
    extra = "train"
    on_request = True

    def availability(self) -> Tuple[bool, str]:
        """Usable where torch imports."""
        from edgexfer.torchdeps import torch_missing

        reason = torch_missing()
        return reason is None, reason or ""

    def quantize(self, target: str, request: QuantizeRequest) -> CandidateModel:
        """The recipe's model for ``target`` after QAT; targets whose recipes quantize alike share one training."""
        import onnx

        if request.qat is None:
            raise ConfigError(f"--quantizer {NAME} trains: add --qat-epochs N (N >= 1)")
        started = time.perf_counter()
        base = RecipeQuantizer().quantize(target, request)
        recipe = recipe_for(target)
        method = base.details["calib_method"]
        key = (NAME, recipe.quantization_key(), method, tuple(base.excluded))
        if key not in request.memo:
            request.memo[key] = _train_and_quantize(recipe, method, list(base.excluded), request)
        model, record = request.memo[key]
        details = dict(calib_method=method, recipe=recipe.to_dict(), qat=record, same_graph_as=RecipeQuantizer.name,
                       quantize_seconds=round(time.perf_counter() - started, 3))
        path = request.work_dir / f"candidate_{target}_{self.name}.onnx"
        onnx.save(model, os.fspath(path))
        return CandidateModel(self.name, target, model, path, list(base.excluded), details)


def _train_and_quantize(recipe: Any, method: str, excluded: list, request: QuantizeRequest) -> Tuple[Any, dict]:
    """Steps 2-4 of the module docstring: (the trained QDQ model, what QAT records)."""
    import onnx

    from edgexfer.quant.ort_quantize import quantize_with_ranges
    from edgexfer.quant.qat import train_qat, training_arrays
    from edgexfer.quant.qat_graph import name_nodes, read_plan, with_weights

    job: QatJob = request.qat
    ranges = request.job.ranges[method]
    work = Path(request.work_dir)
    named = name_nodes(onnx.load(os.fspath(request.prepared)))
    named_path = work / f"qat_{recipe.target}_float.onnx"
    onnx.save(named, os.fspath(named_path))
    start = quantize_with_ranges(named_path, recipe, method, ranges, work, exclude=excluded)
    plan = read_plan(start)
    if "qat_data" not in request.memo:  # one preprocessing of the split for every target
        settings = job.settings
        request.memo["qat_data"] = training_arrays(job.load_samples(), job.preprocess, settings.max_images,
                                                   settings.seed, job.progress)
    pixels, labels = request.memo["qat_data"]
    trained, record = train_qat(named, plan, pixels, labels, job.preprocess, job.settings, job.progress)
    trained_path = work / f"qat_{recipe.target}_trained.onnx"
    onnx.save(with_weights(named, trained), os.fspath(trained_path))
    model = quantize_with_ranges(trained_path, recipe, method, ranges, work, exclude=excluded)
    record.update(calib_method=method, ranges="calibrated, fixed (not recalibrated after training)",
                  float_layers=list(excluded))
    return model, record
