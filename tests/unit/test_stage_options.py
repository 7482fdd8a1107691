"""Every option of every pipeline stage's command is a YAML key of that stage, and it reaches the stage
config exactly as the same option on the command line does (issue 15: "pipeline stage options = the
command's CLI long options with underscores", derived from one source: the command's click options)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import click

from edgexfer.cliparams import option_keys
from edgexfer.config import to_dict
from edgexfer.pipeline import run_pipeline

# A valid value different from the default, where the generic choice (below) would not be valid.
VALUES: Dict[str, Dict[str, Any]] = {
    "finetune": {"model": "mobilenet_v3_small", "weights": "none", "data": "fashion-mnist", "classes": "0-4",
                 "size": 48},
    "export": {"frame": "64x96"},
    "build": {"backend": "openvino", "precision": "int8", "source": "onnx_int8_cpu", "min_batch": 1,
              "opt_batch": 1, "max_batch": 16, "dla_core": 0},
    "verify": {"backends": ["openvino"], "artifact": ["onnxruntime_int8"], "min_agreement": 95.0},
    "bench": {"model": ["resnet18"], "backend": ["onnxruntime"], "precision": ["int8"], "batch": ["4"],
              "frame": "240x320"},
    "deploy": {"to": ["orin", "me@xavier:work"], "backend": "onnxruntime", "precision": ["int8"],
               "ssh_config": __file__},
}


def _base(stage: str, key: str) -> Dict[str, Any]:
    """What the rest of the step needs for the option to be valid: a build option needs a backend that
    declares it (TensorRT's for --max-batch), as the backends declare them; a deploy needs a device; verify's
    --gate-on ci needs the --max-drop it applies to; export's --frame needs --uint8-input, --qat-epochs --int8."""
    if stage == "deploy":
        return {"to": ["device"], **({"setup": True} if key == "wheelhouse" else {})}
    if stage == "verify" and key == "gate_on":
        return {"max_drop": 1.0}
    if stage == "export" and key == "frame":
        return {"uint8_input": True}  # a raw-frame model is a uint8-input model
    if stage == "export" and key == "qat_epochs":
        return {"int8": True}  # QAT trains an INT8 candidate
    if stage != "build":
        return {}
    from edgexfer.backends.base import all_build_options

    declared = all_build_options().get(key)
    return {"backend": declared[1][0] if declared else "onnxruntime"}


def _value(stage: str, key: str, param: click.Option, folder: Path) -> Any:
    """A valid, non-default value for the option."""
    if key in VALUES[stage]:
        return VALUES[stage][key]
    if (stage, key) == ("deploy", "wheelhouse"):  # a folder of wheels
        (folder / "wheels").mkdir(exist_ok=True)
        (folder / "wheels" / "click-8.1.7-py3-none-any.whl").write_bytes(b"")
        return str(folder / "wheels")
    default = param.get_default(click.Context(click.Command("x")))
    if param.is_flag:
        return not default
    if isinstance(param.type, click.Choice):
        return next(c for c in param.type.choices if str(c).lower() != str(default).lower())
    if isinstance(param.type, click.types.IntParamType):
        return 2 if default is None else default + 2
    if isinstance(param.type, click.types.FloatParamType):
        return 0.5 if default is None else default / 2
    return str(folder)  # paths and names: an existing folder


def _argv(param: click.Option, value: Any) -> List[str]:
    """The option on a command line, written by hand (space-separated, repeated for lists)."""
    if param.is_flag:
        return [param.opts[0]] if value else [param.secondary_opts[0]] if param.secondary_opts else []
    values = value if isinstance(value, list) else [value]
    return [token for item in values for token in (param.opts[0], str(item))]


def _cli_config(stage: str, spec: Any, run_dir: Path, options: Dict[str, Any]) -> Any:
    keys = option_keys(spec.command)
    argv = [token for key, value in options.items() for token in _argv(keys[key], value)]
    fixed = option_keys(spec.command).get(spec.run_dir_param)  # None: the positional RUN_DIR
    argv += [str(run_dir)] if fixed is None else [fixed.opts[0], str(run_dir)]
    params = spec.command.make_context(stage, argv).params
    return spec.config_from_params(params, True)


def _yaml_config(stages: Any, stage: str, out: Path, options: Dict[str, Any]) -> Any:
    result = run_pipeline({"out": str(out), "runs": {"r": {stage: options}}}, stages, dry_run=True)
    return result.steps[0].config


def test_every_cli_option_is_a_yaml_key_that_reaches_the_config(tmp_path):
    from edgexfer.commands.run import pipeline_stages

    stages = pipeline_stages()
    checked = []
    for stage, spec in stages.items():
        for key, param in option_keys(spec.command).items():
            if key == spec.run_dir_param:
                continue  # the pipeline supplies the run directory
            base = _base(stage, key)
            options = {**base, key: _value(stage, key, param, tmp_path)}
            yaml_config = _yaml_config(stages, stage, tmp_path / "p", options)
            cli_config = _cli_config(stage, spec, tmp_path / "p" / "r", options)
            default = _cli_config(stage, spec, tmp_path / "p" / "r", base)
            assert to_dict(yaml_config) == to_dict(cli_config), f"{stage} {key}: YAML and CLI configs differ"
            assert to_dict(yaml_config) != to_dict(default), f"{stage} {key}={options[key]!r} changes nothing"
            checked.append(f"{stage}.{key}")
    # the options the review found unreachable from YAML are among them
    for name in ("finetune.patience", "finetune.workers", "export.no_shared_cache", "verify.bootstrap",
                 "verify.plots", "bench.batch", "bench.e2e", "build.workspace_mb", "build.max_batch",
                 "build.strongly_typed"):
        assert name in checked
    assert {"deploy.to", "deploy.remote_python", "deploy.ssh_config", "deploy.keep", "deploy.setup",
            "deploy.wheelhouse"} <= set(checked)


def test_patience_zero_disables_early_stopping_in_yaml_as_on_the_cli(tmp_path):
    from edgexfer.commands.run import pipeline_stages

    stages = pipeline_stages()
    options = {"weights": "none", "patience": 0}
    yaml_config = _yaml_config(stages, "finetune", tmp_path, options)
    assert yaml_config.patience is None
    assert to_dict(yaml_config) == to_dict(_cli_config("finetune", stages["finetune"], tmp_path / "r", options))
