"""Collapse: validation top-1 at chance while training top-1 is well above it, said in one line with its
likely cause (the log, ``metrics.json``'s summary, and the manifest's checkpoint metrics).

"At chance": the best validation top-1 is not above chance by more than sampling noise. Chance is
what a model that knows nothing gets on this validation set: the share of its largest class (1/classes
on a balanced set). With n validation images a know-nothing model's top-1 is binomial(n, chance)/n;
the rule calls the run at chance when top-1 <= chance + 2.326 sd (the one-sided 99% point of the
normal approximation), sd = sqrt(chance (1 - chance) / n): for 600 images and 10 classes, <= 12.8%.

"Well above": the best training top-1 is beyond the same 99% band for the training count and at least
a fifth of the way from chance to 100% (28% for 10 classes, 60% for 2). Training top-1 is measured on
augmented batches while the weights move, so the margin keeps a model that learned nothing at all
(lr too small, a few steps) from being called collapsed: that one is at chance on both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edgexfer.training.precise_bn import DEFAULT_IMAGES

Z_ONE_SIDED_99 = 2.326
WELL_ABOVE_FRACTION = 0.2


@dataclass(frozen=True)
class CollapseCheck:
    """What the rule needs besides the history: the validation labels' chance level and count, the
    training count, and what the likely cause depends on (BatchNorm momentum, precise BN images)."""

    chance: float
    val_images: int
    train_images: int
    bn_momentum: Optional[float]  # the lowest BatchNorm momentum of the trained layers; None: no BatchNorm
    precise_bn: int  # images precise BN recomputes statistics on; 0: off (or nothing to recompute)

    @classmethod
    def from_labels(
        cls,
        val_labels: Sequence[int],
        num_classes: int,
        train_images: int,
        bn_momentum: Optional[float],
        precise_bn: int,
    ) -> "CollapseCheck":
        """Chance = max(1/classes, the largest class's share of the validation labels)."""
        labels = np.asarray(val_labels, dtype=np.int64)
        largest = np.bincount(labels, minlength=num_classes).max() / len(labels) if len(labels) else 0.0
        chance = max(1.0 / max(num_classes, 1), float(largest))
        return cls(chance, len(labels), train_images, bn_momentum, precise_bn)

    def band(self, count: int) -> float:
        """Chance plus the one-sided 99% sampling noise of a know-nothing model on ``count`` images."""
        return self.chance + Z_ONE_SIDED_99 * math.sqrt(self.chance * (1 - self.chance) / max(count, 1))

    def diagnose(self, history: List[Dict[str, Any]]) -> Optional[str]:
        """One line when the run collapsed (see the module docstring), else None."""
        if not history or self.val_images == 0:
            return None
        val = max(row["val_top1"] for row in history)
        train = max(row["train_top1"] for row in history)
        well_above = max(self.band(self.train_images), self.chance + WELL_ABOVE_FRACTION * (1 - self.chance))
        if val > self.band(self.val_images) or train < well_above:
            return None
        return (
            f"collapse: val top-1 {100 * val:.1f}% is at chance ({100 * self.chance:.1f}%, noise band up to "
            f"{100 * self.band(self.val_images):.1f}% on {self.val_images} images) while train top-1 reached "
            f"{100 * train:.1f}%; likely cause: {self._cause()}"
        )

    def _cause(self) -> str:
        if self.bn_momentum is not None and self.precise_bn == 0:
            return (
                f"BatchNorm running statistics lag the weights (momentum {self.bn_momentum:g}, precise BN off); "
                f"rerun with --precise-bn {DEFAULT_IMAGES} to recompute them before validation"
            )
        return (
            "the validation images do not match the training ones (labels, class folders, preprocessing), "
            "or the model memorises the training images; compare a few of each and their labels"
        )
