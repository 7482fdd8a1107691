"""Bad input tried on purpose (issue 7): every case in tests/bad_input_cases.py through the real CLI.

Each bad input must end in one clear line (``edgexfer: error: ...``) that names what the intended check
found (the case's ``mentions``) and the documented exit code (2 bad input, 4 backend unavailable), or
click's usage error for option parsing; never a traceback. Where the user asked for leniency (corrupt
files in a training folder without ``--strict``) the run succeeds and the skips are counted in the log
and the manifest. Valid-but-unusual images (CMYK, palette, 16-bit, alpha, 1x1, unicode names) must
simply work. Hypothesis throws random bytes at predict and random YAML at ``edgexfer run``.

With ``EDGEXFER_BAD_INPUT_PROCESSES=1`` every case runs as a real ``python -m edgexfer`` process and
records its outcome as junit properties: benchmarks/bad_input_matrix.py runs this module that way and
tabulates the junit report.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bad_input_cases as cases
import click
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgexfer.cliparams import option_keys
from edgexfer.errors import DataError

PROCESSES = os.environ.get("EDGEXFER_BAD_INPUT_PROCESSES") == "1"
ROOT = Path(__file__).resolve().parents[2]
HYPOTHESIS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="session")
def base_run(tmp_path_factory) -> Path:
    """The read-only run the cases share: random resnet18 checkpoint, float ONNX, ORT fp32 build."""
    return cases.make_base_run(tmp_path_factory.mktemp("bad_input_base"))


def _process(argv, cwd: Path, timeout: float = 300):
    """``python -m edgexfer ARGV`` as a real process: (exit code, stdout, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([sys.executable, "-m", "edgexfer", *argv], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=str(cwd), check=False)
    except subprocess.TimeoutExpired:
        return None, "", f"no answer within {timeout:.0f} s"
    return proc.returncode, proc.stdout, proc.stderr


def _run_case(case: cases.Case, cli_runner, base_run: Path, root: Path):
    ws = cases.Workspace(root, base_run)
    root.mkdir(parents=True, exist_ok=True)
    argv = ["-q", *case.make(ws)]
    code, out, err = _process(argv, root) if PROCESSES else cli_runner(*argv)
    return ws, code, out, err


def _param(case: cases.Case):
    marks = [pytest.mark.slow] if case.slow else []
    if case.xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in cases.CASES])
def test_bad_input_case(case, cli_runner, base_run, tmp_path, record_property):
    """The outcome is the documented one for this case (see bad_input_cases.classify)."""
    started = time.perf_counter()
    ws, code, out, err = _run_case(case, cli_runner, base_run, tmp_path / "ws")
    ok, why = cases.classify(case, ws, code, out, err) if code is not None else (False, err)
    for name, value in [("stage", case.stage), ("expect", case.expect), ("exit", code), ("detail", why),
                        ("seconds", round(time.perf_counter() - started, 2))]:
        record_property(name, value)
    assert ok, f"{case.id}: {why}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}"


def test_every_error_case_names_what_it_checks():
    """An error case passes only when its own check fired: each names words of that check's message, and
    no two cases of a stage accept the same words (so one check's message cannot pass for another's)."""
    errors = [c for c in cases.CASES if c.expect == "error"]
    assert [c.id for c in errors if len(c.mentions) < 1] == []
    words = [(c.stage, tuple(sorted(w.lower() for w in c.mentions))) for c in errors]
    assert len(set(words)) == len(words), "two cases of a stage name the same words"


def test_every_stage_has_cases():
    """The matrix covers every CLI command that takes user input, with errors and accepted inputs."""
    by_stage = {stage: [c for c in cases.CASES if c.stage == stage] for stage in cases.STAGES}
    assert all(len(v) >= 2 for v in by_stage.values()), {k: len(v) for k, v in by_stage.items()}
    assert len({c.id for c in cases.CASES}) == len(cases.CASES), "duplicate case ids"
    assert {"error", "usage", "lenient", "accept"} <= {c.expect for c in cases.CASES}


def test_classify_rejects_bad_outcomes(tmp_path, base_run):
    """The classifier itself can fail: a traceback, a wrong code, two lines or a missing word are caught."""
    ws = cases.Workspace(tmp_path, base_run)
    case = cases.Case("predict", "x", lambda w: [], mentions=("x.png",))
    good = "edgexfer: error: image 'x.png' is corrupt\n"
    assert cases.classify(case, ws, 2, "", good)[0]
    assert not cases.classify(case, ws, 1, "", good)[0]
    assert not cases.classify(case, ws, 2, "", "Traceback (most recent call last):\n" + good)[0]
    assert not cases.classify(case, ws, 2, "", "a warning\n" + good)[0]
    assert not cases.classify(case, ws, 2, "", "edgexfer: error: image 'y.png' is corrupt\n")[0]
    assert not cases.classify(case, ws, 2, "", "edgexfer: internal error: KeyError: 'x.png'\n")[0]
    assert not cases.classify(cases.Case("run", "u", lambda w: [], expect="usage"), ws, 2, "", good)[0]
    # the words must come from the message, not from a workspace named after the case
    named = cases.Workspace(tmp_path / "predict__empty_image", base_run)
    empty = cases.Case("predict", "empty_image", lambda w: [], mentions=("empty",))
    assert not cases.classify(empty, named, 2, "", f"edgexfer: error: '{named.root}/x.png' is bad\n")[0]
    assert cases.classify(empty, named, 2, "", f"edgexfer: error: '{named.root}/x.png' is empty\n")[0]


def test_debug_shows_the_real_exception(cli_runner, base_run, tmp_path):
    """With --debug the one-line mode is off: the DataError propagates (its traceback is shown)."""
    bad = cases.write_bytes(tmp_path / "zero.jpg", b"")
    with pytest.raises(DataError, match="zero.jpg"):
        cli_runner("--debug", "predict", str(base_run / "export" / "model.onnx"), str(bad))


@pytest.mark.slow
@pytest.mark.parametrize(
    "case_id",
    ["predict/zero_byte_jpg", "finetune/single_class", "build/tensorrt_unavailable",
     "run/mistyped_key"],
)
def test_real_process(case_id, base_run, tmp_path):
    """A few cases as real `python -m edgexfer` processes (exit status and stderr of the process itself)."""
    case = next(c for c in cases.CASES if c.id == case_id)
    ws = cases.Workspace(tmp_path, base_run)
    code, out, err = _process(["-q", *case.make(ws)], tmp_path)
    ok, why = cases.classify(case, ws, code, out, err)
    assert ok, f"{case_id}: {why}\n{err[-1500:]}"


# ---- hypothesis ---------------------------------------------------------------------------------
def _predict_outcome(cli_runner, onnx: Path, image: Path):
    code, out, err = cli_runner("-q", "predict", str(onnx), str(image), "--json")
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 0:  # the bytes happened to decode: then it is a real prediction
        assert '"predictions"' in out
        return code
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(cases.ERROR_PREFIX), lines
    assert image.name in lines[0]
    return code


@HYPOTHESIS
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".jpg", ".png", ".bmp", ".webp", ".tif"]))
def test_predict_random_bytes(cli_runner, base_run, data, suffix):
    """Random bytes named as an image: one clear line naming the file (or, if they decode, a prediction)."""
    with tempfile.TemporaryDirectory() as tmp:
        image = cases.write_bytes(Path(tmp) / f"random{suffix}", data)
        _predict_outcome(cli_runner, base_run / "export" / "model.onnx", image)


@HYPOTHESIS
@given(cut=st.floats(0.0, 0.97), fmt=st.sampled_from(["PNG", "JPEG", "BMP", "WEBP"]))
def test_predict_truncated_real_images(cli_runner, base_run, cut, fmt):
    """A real image cut anywhere before its end: a clean error (truncated JPEGs may decode partially)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(cases._pixels(40, 5)).save(buffer, format=fmt)
    data = buffer.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        image = cases.write_bytes(Path(tmp) / f"cut.{fmt.lower()}", data[: int(len(data) * cut)])
        code = _predict_outcome(cli_runner, base_run / "export" / "model.onnx", image)
        if fmt in ("PNG", "BMP"):
            assert code == 2  # no partial decode for these: a cut file is always refused


_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=False), st.text(max_size=12)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _run_yaml(cli_runner, text: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yaml"
        path.write_text(text, encoding="utf-8")
        code, out, err = cli_runner("-q", "run", str(path), "--dry-run")
        planned = not (Path(tmp) / "out").exists() or not any((Path(tmp) / "out").rglob("*.pt"))
    assert planned, "a dry run wrote a checkpoint"
    assert "Traceback" not in err and code in (0, 2), (code, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(cases.ERROR_PREFIX), lines
    else:
        assert "dry run:" in out
    return code, err


_TOP_KEYS = st.sampled_from(["out", "runs", "stages", "run_dir", "description"]) | st.text(max_size=10)
_STAGE_NAMES = st.sampled_from(["finetune", "export", "build", "verify", "bench"]) | st.text(max_size=8)


# runs: {name: anything, or {stage: anything, a list, or a mapping of options}}
_RUNS = st.dictionaries(st.text(max_size=6), _VALUES | st.dictionaries(
    _STAGE_NAMES, _VALUES | st.lists(_VALUES, max_size=2), max_size=3), max_size=2)


@settings(HYPOTHESIS, max_examples=80)
@given(mapping=st.dictionaries(_TOP_KEYS, _VALUES | _RUNS, max_size=4))
def test_run_random_yaml_mapping(cli_runner, mapping):
    """Any YAML mapping at the top level, often with the real top-level keys and stage names: a dry run
    plans it or refuses it in one line; never a traceback (nor an internal error, exit 1)."""
    _run_yaml(cli_runner, yaml.safe_dump(mapping, allow_unicode=True))


def _pipeline_commands():
    from edgexfer.commands import bench, build, export, finetune, verify

    return {"finetune": finetune.finetune, "export": export.export, "build": build.build,
            "verify": verify.verify, "bench": bench.bench}


# every option of every pipeline stage's command except the run directory the pipeline supplies
_STAGE_OPTIONS = sorted(
    (stage, key) for stage, command in _pipeline_commands().items()
    for key, param in option_keys(command).items() if (stage, key) not in {("finetune", "out"), ("bench", "run")})
_NOT_ONE_VALUE = st.lists(_SCALARS, min_size=2, max_size=3) | st.dictionaries(st.text(max_size=5), _SCALARS,
                                                                                min_size=1, max_size=2)


def _not_an(parse):
    """Text that ``parse`` (int or float, as click applies it) refuses."""
    def refused(text: str) -> bool:
        try:
            parse(text)
        except ValueError:
            return True
        return False

    return st.text(max_size=8).filter(refused)


def _bad_value(stage: str, key: str):
    """Values that the option ``key`` of ``stage`` must refuse, whatever the rest of the step says."""
    param = option_keys(_pipeline_commands()[stage])[key]
    if param.is_flag:
        return st.integers() | st.text(max_size=6) | st.floats(allow_nan=False) | _NOT_ONE_VALUE
    if param.multiple:
        return st.dictionaries(st.text(max_size=5), _SCALARS, min_size=1, max_size=2) | st.lists(
            st.lists(_SCALARS, min_size=1, max_size=2) | st.booleans(), min_size=1, max_size=2)
    wrong_shape = _NOT_ONE_VALUE | st.booleans()
    if isinstance(param.type, click.Choice):
        choices = {str(c).lower() for c in param.type.choices}
        return wrong_shape | st.text(max_size=8).filter(lambda t: t.strip().lower() not in choices) | st.integers()
    if isinstance(param.type, click.types.IntParamType):
        return wrong_shape | _not_an(int) | st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(param.type, click.types.FloatParamType):
        return wrong_shape | _not_an(float)
    return wrong_shape


@st.composite
def _one_bad_option(draw):
    stage, key = draw(st.sampled_from(_STAGE_OPTIONS))
    return stage, key, draw(_bad_value(stage, key))


@HYPOTHESIS
@given(bad=_one_bad_option())
def test_run_valid_pipeline_but_one_bad_value_names_that_key(cli_runner, tmp_path, bad):
    """A valid five-stage pipeline with one option of one stage set to a value its command refuses
    (wrong type, a list or mapping for one value, not a choice, not true/false for a flag): refused
    before anything runs, in one line naming that run, stage and key."""
    stage, key, value = bad
    data = tmp_path / "data" if (tmp_path / "data").exists() else cases.write_image_folder(tmp_path / "data")
    steps = {"finetune": {"weights": "none", "data": str(data), "epochs": 1}, "export": {},
             "build": [{"backend": "onnxruntime"}], "verify": {}, "bench": {}}
    target = steps[stage][0] if stage == "build" else steps[stage]
    target[key] = value
    code, err = _run_yaml(cli_runner, yaml.safe_dump({"out": "out", "runs": {"main": steps}}, allow_unicode=True))
    assert code == 2, f"{stage}.{key}={value!r} was accepted"
    assert f"run 'main' stage '{stage}'" in err and key in err, err


@HYPOTHESIS
@given(key=st.sampled_from(sorted(option_keys(_pipeline_commands()["finetune"])) + ["sizee"]), value=_VALUES)
def test_run_random_finetune_option(cli_runner, tmp_path, key, value):
    """A valid pipeline with one finetune option set to a random value: accepted, or refused naming it."""
    data = (
        cases.write_image_folder(tmp_path / "data", per_class=2)
        if not (tmp_path / "data").exists()
        else tmp_path / "data"
    )
    options = {"model": "resnet18", "weights": "none", "data": str(data), "epochs": 1, key: value}
    text = yaml.safe_dump({"out": "out", "runs": {"main": {"finetune": options}}}, allow_unicode=True)
    code, err = _run_yaml(cli_runner, text)
    if code == 2 and key not in ("data", "out"):  # named as the key or as the option
        assert key in err or f"--{key.replace('_', '-')}" in err or "class" in err, err
    if key == "out":
        assert code == 2 and "set by the pipeline" in err
    if key == "sizee":
        assert code == 2 and "did you mean 'size'" in err
