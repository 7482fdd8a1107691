"""A run's data: what finetune records about it, and the same split rebuilt for later stages.

Finetune records the data spec, the class names and a fingerprint of the split (``describe_data``);
:func:`samples_for_run` rebuilds the split from the spec and refuses it when the fingerprint differs,
so an image added, removed or changed under the same folder cannot silently change what export,
build and verify measure.
"""

from __future__ import annotations

import os
from typing import Any, Dict

from edgexfer.data.samples import ImageSamples
from edgexfer.data.splits import DataSpec, load_splits
from edgexfer.errors import ArtifactError, ConfigError, DataError, StaleArtifactError

SPLITS = ("train", "val")
STAGE = "finetune"  # the stage whose manifest record holds the data spec


def split_fingerprint(train: ImageSamples, val: ImageSamples) -> str:
    """32 hex characters: the first 16 identify the training split, the last 16 the validation split."""
    return train.fingerprint()[:16] + val.fingerprint()[:16]


def describe_data(train: ImageSamples, val: ImageSamples) -> Dict[str, Any]:
    """Counts, skipped files and the split fingerprint, for the log and the manifest."""
    skipped = {path: reason for path, reason in train.skipped + val.skipped}
    return {
        "train_images": len(train),
        "val_images": len(val),
        "num_classes": len(train.class_names),
        "train_per_class": train.class_counts(),
        "skipped_files": len(skipped),
        "skipped_examples": [f"{p}: {r}" for p, r in list(skipped.items())[:10]],
        "fingerprint": split_fingerprint(train, val),
    }


def check_fingerprint(spec: DataSpec, recorded: str, train: ImageSamples, val: ImageSamples) -> None:
    """Raise :class:`StaleArtifactError` when the split differs from the one finetune recorded."""
    now = split_fingerprint(train, val)
    if now == recorded:
        return
    which = [
        name
        for name, part in (("train", slice(0, 16)), ("val", slice(16, 32)))
        if now[part] != recorded[part]
    ]
    raise StaleArtifactError(
        f"the data under '{spec.data}' changed since finetune ({' and '.join(which) or 'its'} split: fingerprint "
        f"{recorded} recorded, {now} now); restore the images the run was trained on, or re-run "
        "'edgexfer finetune' on the data as it is now"
    )


def samples_for_run(run_dir: "os.PathLike[str] | str", split: str) -> ImageSamples:
    """The run's ``train`` or ``val`` split exactly as finetune used it (from the manifest's record).

    Raises :class:`StaleArtifactError` when the data changed since finetune (by its fingerprint).
    """
    from edgexfer.manifest import Manifest

    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; choose train or val")
    config = Manifest.open(run_dir).stage(STAGE).get("config", {})
    data = config.get("data_spec")
    if not isinstance(data, dict):
        raise ArtifactError(f"run '{run_dir}' has no finetune data record; re-run 'edgexfer finetune' for it")
    spec = DataSpec.from_dict(data)
    train, val = load_splits(spec)
    samples = train if split == "train" else val
    expected = config.get("class_names")
    if expected and list(expected) != samples.class_names:
        raise DataError(
            f"the data of run '{run_dir}' changed: classes are now {samples.class_names}, "
            f"finetune used {expected}"
        )
    recorded = (config.get("data_summary") or {}).get("fingerprint")
    if recorded:
        check_fingerprint(spec, str(recorded), train, val)
    return samples
