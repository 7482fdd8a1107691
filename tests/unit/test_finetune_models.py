"""Freezing strategies, block grouping, the feature cache's head path, optimizer groups and schedule."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from edgexfer.errors import ConfigError  # noqa: E402
from edgexfer.models import apply_strategy, backbone_blocks, build_model, find_head  # noqa: E402
from edgexfer.training import features, loop, optim  # noqa: E402
from edgexfer.training.runtime import Runtime, resolve_runtime  # noqa: E402

CPU = Runtime(device=torch.device("cpu"), amp_dtype=None, channels_last=False)


@pytest.mark.parametrize(
    "arch, head_path, width",
    [
        ("resnet18", "fc", 512),
        ("mobilenet_v3_small", "classifier.3", 1024),
        ("shufflenet_v2_x0_5", "fc", 1024),
        ("squeezenet1_1", "classifier.1", 512),
        ("regnet_x_400mf", "fc", 400),
        ("efficientnet_b0", "classifier.1", 1280),
    ],
)
def test_head_width_is_read_from_each_family(arch, head_path, width):
    torch.manual_seed(0)
    model = build_model(arch, 7).eval()
    path, head = find_head(model)
    assert path == head_path
    assert (head.in_features if hasattr(head, "in_features") else head.in_channels) == width
    with torch.no_grad():
        assert tuple(model(torch.randn(2, 3, 64, 64)).shape) == (2, 7)


def test_resnet_blocks_and_strategies():
    model = build_model("resnet18", 4)
    assert [name for name, _ in backbone_blocks(model)] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    linear = apply_strategy(model, "linear")
    assert linear["trainable"] == ["fc.weight", "fc.bias"]
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("fc."))
    partial = apply_strategy(model, "partial", unfreeze_blocks=2)
    assert {n.split(".")[0] for n in partial["trainable"]} == {"layer3", "layer4", "fc"}
    assert "conv1.weight" in partial["frozen"] and "layer2.1.bn2.bias" in partial["frozen"]
    full = apply_strategy(model, "full")
    assert full["frozen"] == [] and all(p.requires_grad for p in model.parameters())


def test_partial_keeps_vit_position_embedding_frozen_and_mobilenet_hidden_layer_trainable():
    mobilenet = build_model("mobilenet_v3_small", 3)
    trainable = apply_strategy(mobilenet, "partial", 1)["trainable"]
    assert "classifier.0.weight" in trainable and trainable[0].startswith("features.12.")
    vit = build_model("vit_b_16", 3)
    trainable = apply_strategy(vit, "partial", 1)["trainable"]
    assert "encoder.pos_embedding" not in trainable and "class_token" not in trainable
    assert "encoder.ln.weight" in trainable and "heads.head.weight" in trainable


def test_strategy_errors_name_the_valid_range():
    model = build_model("resnet18", 3)
    with pytest.raises(ConfigError, match="between 1 and 5.*stem, layer1"):
        apply_strategy(model, "partial", unfreeze_blocks=9)
    with pytest.raises(ConfigError, match="linear, partial, full"):
        apply_strategy(model, "frozen")


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "squeezenet1_1"])
def test_cached_features_through_the_head_equal_the_full_model(arch):
    torch.manual_seed(0)
    model = build_model(arch, 5).eval()
    images = torch.randn(6, 3, 64, 64)
    labels = torch.arange(6) % 5
    loader = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    cached, got_labels = features.extract_features(model, loader, CPU, progress=False)
    with torch.no_grad():
        expected = model(images)
        via_cache = features.head_forward(model)(cached)
    assert torch.equal(got_labels, labels)
    torch.testing.assert_close(via_cache, expected, rtol=1e-4, atol=1e-5)


def test_warmup_cosine_schedule_values():
    factor = optim.warmup_cosine(total_steps=110, warmup_steps=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.5)
    assert factor(110) == pytest.approx(0.0, abs=1e-12)
    no_warmup = optim.warmup_cosine(total_steps=4, warmup_steps=0)
    assert [round(no_warmup(s), 4) for s in range(5)] == [1.0, 0.8536, 0.5, 0.1464, 0.0]


def test_param_groups_lower_backbone_lr_and_skip_decay_on_norms():
    model = build_model("resnet18", 3)
    apply_strategy(model, "full")
    groups = {
        g["name"]: g for g in optim.param_groups(model, lr=0.01, weight_decay=1e-4, backbone_lr_mult=0.1)
    }
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert groups["backbone"]["lr"] == pytest.approx(0.001) and groups["head"]["lr"] == 0.01
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] == 1e-4
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == sum(
        p.numel() for p in model.parameters()
    )
    apply_strategy(model, "linear")
    assert {g["name"] for g in optim.param_groups(model, 0.1, 1e-4, 0.1)} == {"head", "head_no_decay"}


def test_frozen_batchnorm_stays_in_eval_mode():
    model = build_model("resnet18", 3)
    apply_strategy(model, "partial", 1)
    model.train()
    loop.set_frozen_modules_eval(model)
    assert not model.bn1.training and not model.layer3[1].bn2.training
    assert model.layer4[0].bn1.training and model.fc.training


def test_runtime_resolution_on_cpu():
    runtime = resolve_runtime("cpu", "off", "off")
    assert runtime.amp_dtype is None and not runtime.channels_last and runtime.world_size == 1
    forced = resolve_runtime("cpu", "on", "auto")
    assert forced.amp_dtype == torch.bfloat16 and forced.channels_last
    with pytest.raises(ConfigError, match="auto, on, off"):
        resolve_runtime("cpu", "fp8", "auto")


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from edgexfer.checkpoint import read_checkpoint_file
    from edgexfer.training.state import restore_rng_state, rng_state

    def draws():
        return (torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.normal(), random.random())

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's state, which must come back too
    torch.save({"rng": rng_state(torch.device("cpu"))}, tmp_path / "state.pt")
    expected = draws()
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    restore_rng_state(read_checkpoint_file(tmp_path / "state.pt")["rng"], torch.device("cpu"))
    assert draws() == expected
    # a last.pt from before numpy/Python states were saved: torch's state alone is restored
    torch.manual_seed(5)
    old = {"torch": torch.get_rng_state()}
    want = torch.rand(2).tolist()
    restore_rng_state(old, torch.device("cpu"))
    assert torch.rand(2).tolist() == want


@pytest.mark.parametrize(
    "features, onednn, expected",
    [
        (["avx2", "avx512f", "avx512_bf16"], True, True),
        (["avx2", "amx_bf16"], True, True),
        (["avx2", "avx512f"], True, False),  # oneDNN emulates bf16 there: slower than fp32
        (["avx512_bf16"], False, False),
        ([], True, True),  # no feature list (not Linux): oneDNN decides
    ],
)
def test_cpu_bf16_autocast_needs_native_bf16(monkeypatch, features, onednn, expected):
    from edgexfer import hardware
    from edgexfer.training import runtime

    monkeypatch.setattr(hardware, "cpu_info", lambda: {"features": features})
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn, raising=False)
    assert runtime.cpu_has_native_bf16() is expected
