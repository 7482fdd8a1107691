"""The timm model source (``--model timm/<name>``): names, heads, weights, preprocessing, deploy form, limits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from edgexfer import models  # noqa: E402
from edgexfer.errors import BackendUnavailableError, ConfigError, ModelError  # noqa: E402
from edgexfer.timm_models import is_timm_name, timm_name  # noqa: E402


def test_name_parsing_and_known_names():
    assert is_timm_name("timm/repvgg_a0") and not is_timm_name("resnet18")
    assert timm_name("timm/resnet18.a1_in1k") == "resnet18.a1_in1k"
    assert models.check_model_name("timm/repvgg_a0") == "timm/repvgg_a0"
    assert models.check_model_name("timm/resnet18.a1_in1k") == "timm/resnet18.a1_in1k"  # a pretrained tag


def test_unknown_timm_name_is_one_line_with_close_names_and_how_to_list():
    with pytest.raises(ModelError) as info:
        models.check_model_name("timm/repvgg_a9")
    message = str(info.value)
    assert "\n" not in message
    assert "unknown timm model 'timm/repvgg_a9'" in message
    assert "timm/repvgg_a0" in message  # a close name, with the prefix the user must type
    assert "timm.list_models(" in message
    with pytest.raises(ModelError, match=r"no weights tag 'nonsense'; its tags: timm/resnet18\.a1_in1k"):
        models.check_model_name("timm/resnet18.nonsense")


def test_without_timm_the_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(BackendUnavailableError) as info:
        models.check_model_name("timm/repvgg_a0")
    assert info.value.exit_code == 4
    assert "pip install 'edgexfer[timm]'" in str(info.value)
    assert models.check_model_name("resnet18") == "resnet18"  # torchvision names never need timm


@pytest.mark.parametrize("name, head", [("timm/repvgg_a0", "head.fc"), ("timm/efficientnet_lite0", "classifier")])
def test_build_replaces_the_head_through_timm(name, head):
    model = models.build_model(name, 7)
    path, module = models.find_head(model)
    assert path == head and module is model.get_classifier() and module.out_features == 7
    assert models.replace_head(model, 4) == head and model.get_classifier().out_features == 4
    assert model.num_classes == 4
    assert models.head_parameter_names(model) == [f"{head}.weight", f"{head}.bias"]


def test_partial_strategy_uses_timm_stages():
    model = models.build_model("timm/repvgg_a0", 3)
    blocks = [name for name, _ in models.backbone_blocks(model)]
    assert blocks[0] == "stem" and blocks[1:5] == ["stages.0", "stages.1", "stages.2", "stages.3"]
    split = models.apply_strategy(model, "partial", 1)
    assert any(n.startswith("stages.3.") for n in split["trainable"])
    assert not any(n.startswith("stages.2.") for n in split["trainable"])
    assert "head.fc.weight" in split["trainable"]


def test_offline_weights_say_which_file_to_put_where(monkeypatch, tmp_path):
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelError) as info:
        models.load_imagenet_state_dict("timm/repvgg_a0")
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    assert "huggingface-cli download timm/repvgg_a0.rvgg_in1k model.safetensors" in message
    assert "models--timm--repvgg_a0.rvgg_in1k" in message  # where it goes in the cache
    assert "--weights PATH/model.safetensors" in message


def test_local_weights_file_goes_through_timms_loader(tmp_path):
    import torch
    from safetensors.torch import save_file

    from edgexfer.stages.finetune.inputs import load_weights

    torch.manual_seed(1)
    source = timm.create_model("repvgg_a0", pretrained=False)  # 1000 classes, as timm's hub file
    file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(file))
    model = models.build_model("timm/repvgg_a0", 3)
    description, meta = load_weights(model, str(file), "timm/repvgg_a0")
    assert description.startswith("timm:repvgg_a0#file=") and meta["preprocess"]["interpolation"] == "bilinear"
    key = "stem.conv_kxk.conv.weight"
    assert torch.equal(model.state_dict()[key], source.state_dict()[key])
    assert model.get_classifier().out_features == 3  # the 1000-class head was not loaded


def test_preprocessing_comes_from_timms_data_config(image_folder, tmp_path):
    from edgexfer.stages.finetune.config import FinetuneConfig
    from edgexfer.stages.finetune.inputs import choose_preprocess

    config = FinetuneConfig(out=tmp_path / "r", model="timm/fastvit_t8", weights="none", data=str(image_folder))
    preprocess = choose_preprocess(config, config.data_spec(), {})
    # fastvit_t8: input 256, crop_pct 0.9, bicubic (timm's pretrained_cfg); resize = floor(256 / 0.9)
    assert (preprocess.size, preprocess.resize_size, preprocess.interpolation) == (256, 284, "bicubic")
    assert preprocess.extra == {"crop_pct": 0.9, "source": "timm.data.resolve_data_config"}
    small = FinetuneConfig(out=tmp_path / "s", model="timm/mobilenetv4_conv_small", weights="none", size=48)
    chosen = choose_preprocess(small, small.data_spec(), {})
    assert (chosen.size, chosen.resize_size, chosen.interpolation) == (48, 48, "bicubic")
    torchvision_run = FinetuneConfig(out=tmp_path / "t", model="resnet18", weights="none", data=str(image_folder))
    assert choose_preprocess(torchvision_run, torchvision_run.data_spec(), {}).resize_size == 256


def test_deploy_form_only_for_families_that_have_one():
    import torch

    repvgg = models.build_model("timm/repvgg_a0", 3).eval()
    deployed, changed = models.deploy_form(repvgg)
    assert changed and deployed is not repvgg
    # RepVGG's train form has 3x3, 1x1 and identity branches; the deploy form one 3x3 conv per block
    convs = [m for m in deployed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) < len([m for m in repvgg.modules() if isinstance(m, torch.nn.Conv2d)])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(repvgg(x), deployed(x), atol=1e-3)
    for name in ("resnet18", "timm/efficientnet_lite0"):
        model = models.build_model(name, 3)
        assert models.deploy_form(model) == (model, False)


def test_blocking_limit_stops_finetune_before_training(tmp_path):
    from edgexfer.model_limits import check_model_limits
    from edgexfer.stages.finetune.config import FinetuneConfig

    with pytest.raises(ConfigError) as info:
        FinetuneConfig(out=tmp_path / "r", model="vit_b_16", weights="none", size=32)
    assert "vit_b_16" in str(info.value) and "--size 224" in str(info.value)
    FinetuneConfig(out=tmp_path / "r", model="vit_b_16", weights="none", size=224)  # its own size is fine
    assert check_model_limits("timm/repvgg_a0", 32) == []
    # a per-target limit is a warning line, and finetune goes on
    (line,) = check_model_limits("swin_t", 32)
    assert "export --int8 is known to fail" in line and "symbolic shape inference" in line
    FinetuneConfig(out=tmp_path / "s", model="swin_t", weights="none", size=32)


@pytest.mark.slow  # a RepVGG-A0 export with its two parity checks: 10-40 s on 2 shared cores
def test_export_reparameterizes_and_records_it(tmp_path):
    import onnx
    import torch
    from conftest import make_image_folder, make_run_dir

    from edgexfer.manifest import Manifest
    from edgexfer.stages.export import ExportConfig, run_export

    run = make_run_dir(tmp_path / "run", arch="timm/repvgg_a0", size=32)
    data = make_image_folder(tmp_path / "eval", per_class=4, size=32)
    run_export(ExportConfig(run_dir=run, eval_data=data, eval_size=12, parity_images=12, progress=False))
    metrics = Manifest.open(run).get("onnx").metrics
    assert metrics["reparameterized"] is True
    assert 0 < metrics["reparam_max_abs_diff"] < 1e-3 and metrics["reparam_top1_agreement"] == 1.0
    graph = onnx.load(str(run / "export" / "model.onnx")).graph
    ops = [node.op_type for node in graph.node]
    from edgexfer.checkpoint import load_checkpoint

    trained, _ = load_checkpoint(run / "finetune" / "best.pt")
    deployed, _ = models.deploy_form(trained)
    # what was exported is the deploy form: one Conv per deploy-form conv, no branch sums
    assert ops.count("Conv") == sum(isinstance(m, torch.nn.Conv2d) for m in deployed.modules())
    assert "Add" not in ops
    assert Manifest.open(run).get("onnx").config["deploy_form"] == "reparameterized"


def test_torchvision_export_is_not_reparameterized(random_run, image_folder):
    from edgexfer.manifest import Manifest
    from edgexfer.stages.export import ExportConfig, run_export

    run_export(ExportConfig(run_dir=random_run, eval_data=Path(image_folder), eval_size=9, parity_images=9,
                            progress=False))
    metrics = Manifest.open(random_run).get("onnx").metrics
    assert metrics["reparameterized"] is False and "reparam_max_abs_diff" not in metrics


def test_export_line_says_the_model_was_reparameterized():
    from edgexfer.commands.export import _detail

    line = _detail({"max_abs_diff": 1e-4, "top1_agreement": 1.0, "reparameterized": True,
                    "reparam_max_abs_diff": 2e-3})
    assert line.endswith("reparameterized, max abs diff 2.00e-03 vs the trained form")
    assert "reparameterized" not in _detail({"max_abs_diff": 1e-4, "top1_agreement": 1.0, "reparameterized": False})
