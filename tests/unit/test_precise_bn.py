"""Precise BatchNorm (edgexfer.training.precise_bn) and the collapse rule (edgexfer.training.collapse):
exact pooled statistics, what the pass leaves alone, stale statistics at chance and fixed, two gloo ranks
agreeing, and when a run is called collapsed."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgexfer.training import precise_bn  # noqa: E402
from edgexfer.training.collapse import CollapseCheck  # noqa: E402
from edgexfer.training.runtime import Runtime  # noqa: E402

CPU = Runtime(torch.device("cpu"), None, False)


class Toy(torch.nn.Module):
    """conv -> BN (momentum 0.01, as torchvision's MobileNetV3) -> ReLU -> pool -> dropout -> BN1d -> linear."""

    def __init__(self, classes: int = 2, momentum: float = 0.01):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4, momentum=momentum)
        self.drop = torch.nn.Dropout(0.5)
        self.bn1d = torch.nn.BatchNorm1d(4, momentum=momentum)
        self.head = torch.nn.Linear(4, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.head(self.bn1d(self.drop(x)))


def _batches(images: torch.Tensor, sizes):
    start = 0
    for size in sizes:
        yield images[start : start + size], torch.zeros(size, dtype=torch.long)
        start += size


def _expected(model: Toy, images: torch.Tensor):
    """Population statistics of each BN layer's input over all images, computed by hand with numpy (the
    inputs of the BN1d come from the BN2d normalised by its batch's statistics, batch by batch)."""
    conv = model.conv(images).detach().double().numpy()  # N C H W
    mean2d = conv.mean(axis=(0, 2, 3))
    n2d = conv.shape[0] * conv.shape[2] * conv.shape[3]
    var2d = conv.var(axis=(0, 2, 3)) * n2d / (n2d - 1)
    return mean2d, var2d


def test_statistics_are_the_exact_pooled_mean_and_unbiased_variance_over_unequal_batches():
    torch.manual_seed(0)
    model = Toy()
    images = torch.randn(23, 3, 6, 6) * 3 + 5
    model.train()
    precise_bn.recompute_bn_stats(model, _batches(images, [10, 10, 3]), CPU)
    mean, var = _expected(model, images)
    np.testing.assert_allclose(model.bn.running_mean.double().numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.bn.running_var.double().numpy(), var, rtol=1e-5)
    # BN1d: its inputs are the pooled features of the batches as training sees them (BN2d in batch mode),
    # with dropout OFF: the statistics are those of the network at inference
    feats = []
    for batch, _ in _batches(images, [10, 10, 3]):
        x = model.conv(batch)
        x = torch.nn.functional.batch_norm(x, None, None, model.bn.weight, model.bn.bias, True, 0.0, model.bn.eps)
        feats.append(torch.relu(x).mean(dim=(2, 3)).detach().double())
    feats = torch.cat(feats).numpy()
    np.testing.assert_allclose(model.bn1d.running_mean.double().numpy(), feats.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.bn1d.running_var.double().numpy(), feats.var(0, ddof=1), rtol=1e-4)


def test_the_pass_leaves_modes_momenta_counters_rng_and_frozen_layers_alone():
    torch.manual_seed(0)
    model = Toy()
    model.train()
    model.bn1d.eval()  # a frozen layer (set_frozen_modules_eval puts those in eval mode)
    frozen = (model.bn1d.running_mean.clone(), model.bn1d.running_var.clone())
    tracked = model.bn.num_batches_tracked.clone()
    weights = {k: v.clone() for k, v in model.named_parameters()}
    images = torch.randn(12, 3, 6, 6) + 2
    rng = torch.get_rng_state()
    result = precise_bn.recompute_bn_stats(model, _batches(images, [6, 6]), CPU)
    assert (result.layers, result.images) == (1, 12)
    assert torch.equal(torch.get_rng_state(), rng)  # no draw: dropout was off, nothing sampled
    assert model.training and model.drop.training and model.bn.training and not model.bn1d.training
    assert model.bn.momentum == 0.01 and torch.equal(model.bn.num_batches_tracked, tracked)
    assert torch.equal(model.bn1d.running_mean, frozen[0]) and torch.equal(model.bn1d.running_var, frozen[1])
    assert all(torch.equal(v, weights[k]) for k, v in model.named_parameters())
    assert not torch.allclose(model.bn.running_mean, torch.zeros(4))  # and the trained one did change


def test_loader_draws_nothing_from_the_global_generator(tmp_path):
    from conftest import make_image_folder

    from edgexfer.data import folder_samples
    from edgexfer.preprocess import Preprocess

    samples = folder_samples(make_image_folder(tmp_path / "imgs", per_class=4, size=20))
    picked = precise_bn.pick_images(samples, 5, seed=3)
    assert len(picked) == 5 and len(precise_bn.pick_images(samples, 99, seed=3)) == 12
    loader = precise_bn.make_loader(picked, Preprocess(size=16, resize_size=16).eval_transform(), 2, CPU, 0)
    rng = torch.get_rng_state()
    assert sum(len(b) for b, _ in loader) == 5
    assert torch.equal(torch.get_rng_state(), rng)


def test_stale_low_momentum_statistics_validate_at_chance_and_precise_ones_do_not():
    """Two classes told apart by brightness; inputs far from BN's initial statistics (mean 0, var 1).
    Ten training steps move momentum-0.01 running statistics only ~10% of the way: eval-mode outputs are
    garbage (chance), while the network itself has learned (batch-statistics accuracy high)."""
    torch.manual_seed(0)
    model = Toy(momentum=0.01)

    def data(n, seed):
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % 2
        x = torch.randn(n, 3, 6, 6, generator=g) + 40.0 + 8.0 * labels[:, None, None, None].float()
        return x, labels

    train_x, train_y = data(128, 1)
    val_x, val_y = data(200, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for step in range(10):
        batch = slice(16 * (step % 8), 16 * (step % 8) + 16)
        loss = torch.nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def val_top1():
        model.eval()
        with torch.no_grad():
            top1 = float((model(val_x).argmax(1) == val_y).float().mean())
        model.train()
        return top1

    stale = val_top1()
    precise_bn.recompute_bn_stats(model, _batches(train_x, [32] * 4), CPU)
    assert stale == pytest.approx(0.5, abs=0.05)
    assert val_top1() >= 0.95


def _ddp_worker(rank: int, init: str, images: torch.Tensor, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same weights on both ranks, as DDP guarantees
        model = Toy()
        model.train()
        runtime = Runtime(torch.device("cpu"), None, False, rank=rank, world_size=2)
        shard = images[rank::2]
        sizes = [5, len(shard) - 5]
        result = precise_bn.recompute_bn_stats(model, _batches(shard, sizes), runtime)
        torch.save({"state": model.state_dict(), "images": result.images}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_end_with_the_statistics_of_all_their_images(tmp_path):
    import torch.multiprocessing as mp

    images = torch.randn(17, 3, 6, 6) * 2 + 3  # unequal shards: 9 and 8 images
    init = f"file://{tmp_path / 'rendezvous'}"
    out = str(tmp_path / "state")
    mp.start_processes(_ddp_worker, args=(init, images, out), nprocs=2, start_method="spawn", join=True)
    ranks = [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]
    assert ranks[0]["images"] == ranks[1]["images"] == 17
    for key in ("bn.running_mean", "bn.running_var", "bn1d.running_mean", "bn1d.running_var"):
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
    torch.manual_seed(0)
    single = Toy()
    mean, var = _expected(single, images)  # the first BN's statistics of all 17 images in one process
    np.testing.assert_allclose(ranks[0]["state"]["bn.running_mean"].double().numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ranks[0]["state"]["bn.running_var"].double().numpy(), var, rtol=1e-5)


# ---- collapse ------------------------------------------------------------------------------------
def _history(val: float, train: float):
    return [{"val_top1": 0.1, "train_top1": 0.2}, {"val_top1": val, "train_top1": train}]


def test_collapse_rule_chance_band_and_causes():
    labels = np.repeat(np.arange(10), 60)  # 600 balanced validation images
    check = CollapseCheck.from_labels(labels, 10, 2400, bn_momentum=0.01, precise_bn=0)
    assert check.chance == pytest.approx(0.1)
    assert check.band(600) == pytest.approx(0.1 + 2.326 * (0.09 / 600) ** 0.5)  # 12.85%
    line = check.diagnose(_history(0.10, 0.85))
    assert line.startswith("collapse: val top-1 10.0% is at chance (10.0%")
    assert "600 images" in line and "85.0%" in line and "momentum 0.01" in line and "--precise-bn" in line
    assert check.diagnose(_history(0.128, 0.85)) is not None
    assert check.diagnose(_history(0.13, 0.85)) is None  # above the band: learned something
    assert check.diagnose(_history(0.10, 0.27)) is None  # train not a fifth of the way to 100%: not collapse
    assert check.diagnose(_history(0.10, 0.29)) is not None
    assert check.diagnose([]) is None
    # precise BN already on, or no BatchNorm: the cause is elsewhere
    for momentum, images in ((0.01, 1024), (None, 0)):
        other = CollapseCheck.from_labels(labels, 10, 2400, momentum, images)
        assert "do not match the training ones" in other.diagnose(_history(0.1, 0.9))


def test_chance_is_the_largest_class_share_on_an_unbalanced_set():
    labels = np.array([0] * 70 + [1] * 30)
    check = CollapseCheck.from_labels(labels, 2, 400, None, 0)
    assert check.chance == pytest.approx(0.7)
    assert check.diagnose(_history(0.7, 0.95)) is not None  # always answering class 0 is not learning
