"""``edgexfer finetune`` on the command line: outputs, manifest records, and one-line errors."""

from __future__ import annotations

import json

import pytest

from edgexfer.manifest import Manifest

FAST = (
    "--weights",
    "none",
    "--size",
    "32",
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--amp",
    "off",
    "--no-progress",
)


def _one_line_error(code, err, exit_code=2):
    lines = [line for line in err.strip().splitlines() if line.startswith("edgexfer: error")]
    assert code == exit_code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_finetune_cli_writes_and_records_everything(cli_runner, split_image_folder, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli_runner(
        "finetune", "--data", str(split_image_folder), "--out", str(out), "--strategy", "linear", *FAST
    )
    assert code == 0, err
    assert f"checkpoint: {out / 'finetune' / 'best.pt'}" in stdout
    assert f"next: edgexfer export {out}" in stdout
    manifest = Manifest.open(out)
    for name, kind in (
        ("checkpoint", "checkpoint"),
        ("checkpoint_last", "checkpoint"),
        ("finetune_metrics", "metrics"),
        ("finetune_plot", "plot"),
    ):
        assert manifest.get(name).kind == kind and manifest.is_fresh(name)
    assert (out / "finetune" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "finetune" / "metrics.json").read_text())
    assert metrics["summary"]["train_images"] == 48 and metrics["summary"]["val_images"] == 18
    assert len(metrics["history"]) == 1 and 0.0 <= metrics["history"][0]["val_top1"] <= 1.0
    record = manifest.stage("finetune")
    assert record["status"] == "done" and record["config"]["class_names"] == ["blue", "green", "red"]
    assert record["config"]["data_spec"]["data"] == str(split_image_folder.resolve())
    assert not list(out.rglob("*.partial"))


def test_corrupt_files_are_counted_in_manifest_or_fail_with_strict(cli_runner, image_folder, tmp_path):
    (image_folder / "red" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (image_folder / "green" / "Thumbs.db").write_bytes(b"\0\1\2")
    code, _, err = cli_runner(
        "finetune", "--data", str(image_folder), "--out", str(tmp_path / "a"), "--strategy", "linear", *FAST
    )
    assert code == 0, err
    record = Manifest.open(tmp_path / "a").stage("finetune")
    assert record["metrics"]["skipped_files"] == 2
    assert any("bad.jpg" in e for e in record["config"]["data_summary"]["skipped_examples"])
    code, _, err = cli_runner(
        "finetune", "--data", str(image_folder), "--out", str(tmp_path / "b"), "--strict", *FAST
    )
    line = _one_line_error(code, err)
    assert "bad.jpg" in line or "Thumbs.db" in line


@pytest.mark.parametrize(
    "args, message",
    [
        (("--model", "resnet81"), "unknown model 'resnet81'; did you mean resnet18"),
        (("--data", "/no/such/folder"), "neither an existing folder nor a known dataset"),
        (("--classes", "0-1,9"), "class index 9 in --classes is out of range"),
        (("--epochs", "0"), "epochs must be > 0"),
        (("--resume",), "does not exist; start the run without --resume"),
        (("--strategy", "partial", "--unfreeze-blocks", "7"), "between 1 and 5"),
    ],
)
def test_bad_options_are_one_clear_line(cli_runner, split_image_folder, tmp_path, args, message):
    base = ["finetune", "--data", str(split_image_folder), "--out", str(tmp_path / "run"), *FAST]
    code, _, err = cli_runner(*base, *args)
    assert message in _one_line_error(code, err)


def test_empty_data_folder_and_empty_class_folder(cli_runner, tmp_path, image_folder):
    (tmp_path / "empty").mkdir()
    code, _, err = cli_runner(
        "finetune", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), *FAST
    )
    assert "no class sub-folders" in _one_line_error(code, err)
    (image_folder / "purple").mkdir()
    code, _, err = cli_runner("finetune", "--data", str(image_folder), "--out", str(tmp_path / "r"), *FAST)
    assert "purple" in _one_line_error(code, err)


def test_weights_that_do_not_fit_are_refused(cli_runner, split_image_folder, tmp_path):
    import torch
    import torchvision

    other = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), other)
    code, _, err = cli_runner(
        "finetune",
        "--data",
        str(split_image_folder),
        "--out",
        str(tmp_path / "r"),
        *FAST,
        "--weights",
        str(other),
    )
    assert "do not fit ResNet" in _one_line_error(code, err)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a torch file")
    code, _, err = cli_runner(
        "finetune",
        "--data",
        str(split_image_folder),
        "--out",
        str(tmp_path / "r"),
        *FAST,
        "--weights",
        str(junk),
    )
    assert "cannot read weights file" in _one_line_error(code, err)


def test_edgexfer_checkpoint_of_another_arch_names_it(cli_runner, random_run, split_image_folder, tmp_path):
    code, _, err = cli_runner(
        "finetune",
        "--data",
        str(split_image_folder),
        "--out",
        str(tmp_path / "r"),
        *FAST,
        "--model",
        "mobilenet_v3_small",
        "--weights",
        str(random_run / "finetune" / "best.pt"),
    )
    assert "checkpoint of resnet18, not mobilenet_v3_small; pass --model resnet18" in _one_line_error(
        code, err
    )


def test_help_lists_strategies_and_examples(cli_runner):
    code, stdout, _ = cli_runner("finetune", "--help")
    assert code == 0
    for text in ("--strategy [linear|partial|full]", "--classes", "torchrun --nproc_per_node=2", "embedded"):
        assert text in stdout


def test_imagenet_weights_offline_say_where_to_put_the_file(
    cli_runner, split_image_folder, tmp_path, monkeypatch
):
    import urllib.error

    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    code, _, err = cli_runner(
        "finetune",
        "--data",
        str(split_image_folder),
        "--out",
        str(tmp_path / "r"),
        *[a for a in FAST if a not in ("--weights", "none")],
        "--weights",
        "imagenet",
    )
    line = _one_line_error(code, err)
    assert "resnet18-f37072fd.pth" in line and "--weights PATH" in line and "--weights none" in line


def _params(*args: str) -> dict:
    """The click parameters of ``edgexfer finetune ARGS``, click's defaults applied."""
    from edgexfer.commands.finetune import finetune

    with finetune.make_context("finetune", list(args)) as ctx:
        return dict(ctx.params)


def test_every_finetune_option_is_a_config_field_with_the_same_default():
    import dataclasses

    from edgexfer.commands.finetune import config_from_params
    from edgexfer.stages.finetune import FinetuneConfig

    params = _params()
    fields = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}
    cli_only = {"no_progress"}  # folded into FinetuneConfig.progress
    assert set(params) - cli_only == set(fields) - {"progress"}
    for name, default in params.items():
        if name not in cli_only and name != "out":
            assert default == fields[name], name
    config = config_from_params(params, progress=True)
    assert config.out.parent.name == "runs" and config.out.name.startswith("resnet18-")
    assert config.progress and config.patience == 5 and config.num_workers is None


def test_config_from_params_applies_the_cli_rules(tmp_path):
    from edgexfer.commands.finetune import config_from_params
    from edgexfer.errors import ConfigError

    config = config_from_params(_params("--out", str(tmp_path), "--patience", "0", "--workers", "3"), True)
    assert config.patience is None and config.num_workers == 3 and config.out == tmp_path
    assert not config_from_params(_params("--out", str(tmp_path), "--no-progress"), True).progress
    assert not config_from_params(_params("--out", str(tmp_path)), progress=False).progress
    with pytest.raises(ConfigError, match="--resume needs --out DIR"):
        config_from_params(_params("--resume"), True)
    with pytest.raises(ConfigError, match=r"patience must be >= 0 \(0 disables early stopping\), got -1"):
        config_from_params(_params("--out", str(tmp_path), "--patience", "-1"), True)


def test_patience_zero_disables_early_stopping_in_yaml_as_on_the_cli(
    cli_runner, split_image_folder, tmp_path
):
    from edgexfer.stages.finetune import FinetuneConfig

    assert FinetuneConfig(out=tmp_path, patience=0).patience is None
    assert FinetuneConfig(out=tmp_path, patience=3).patience == 3
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        f"out: {tmp_path / 'runs'}\nruns:\n  main:\n    finetune: {{data: '{split_image_folder}', "
        "weights: none, patience: 0}\n"
    )
    code, stdout, err = cli_runner("run", str(pipeline), "--dry-run")
    assert code == 0 and "would run" in stdout, err
