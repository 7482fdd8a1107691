"""Bad input tried on purpose (issue 7): every case in tests/bad_input_cases.py through the real CLI.

Each bad input must end in one clear line (``edgexfer: error: ...``) and the documented exit code (2 bad
input, 4 backend unavailable), or click's usage error for option parsing; never a traceback. Where the
user asked for leniency (corrupt files in a training folder without ``--strict``) the run succeeds and
the skips are counted in the log and the manifest. Valid-but-unusual images (CMYK, palette, 16-bit,
alpha, 1x1, unicode names) must simply work. Hypothesis throws random bytes at predict and random
YAML at ``edgexfer run``. benchmarks/bad_input_matrix.py runs the same cases as real processes.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import bad_input_cases as cases
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgexfer.errors import DataError

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


def _run_case(case: cases.Case, cli_runner, base_run: Path, root: Path):
    ws = cases.Workspace(root, base_run)
    root.mkdir(parents=True, exist_ok=True)
    code, out, err = cli_runner("-q", *case.make(ws))
    return ws, code, out, err


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in cases.CASES]
)
def test_bad_input_case(case, cli_runner, base_run, tmp_path):
    """The outcome is the documented one for this case (see bad_input_cases.classify)."""
    ws, code, out, err = _run_case(case, cli_runner, base_run, tmp_path / "ws")
    ok, why = cases.classify(case, ws, code, out, err)
    assert ok, f"{case.id}: {why}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}"


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


def test_debug_shows_the_real_exception(cli_runner, base_run, tmp_path):
    """With --debug the one-line mode is off: the DataError propagates (its traceback is shown)."""
    bad = cases.write_bytes(tmp_path / "zero.jpg", b"")
    with pytest.raises(DataError, match="zero.jpg"):
        cli_runner("--debug", "predict", str(base_run / "export" / "model.onnx"), str(bad))


@pytest.mark.slow
@pytest.mark.parametrize(
    "case_id",
    ["predict/zero_byte_jpg", "run/mistyped_key", "finetune/single_class", "build/tensorrt_unavailable"],
)
def test_real_process(case_id, base_run, tmp_path):
    """A few cases as real `python -m edgexfer` processes (exit status and stderr of the process itself)."""
    case = next(c for c in cases.CASES if c.id == case_id)
    ws = cases.Workspace(tmp_path, base_run)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, "-m", "edgexfer", "-q", *case.make(ws)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    ok, why = cases.classify(case, ws, proc.returncode, proc.stdout, proc.stderr)
    assert ok, f"{case_id}: {why}\n{proc.stderr[-1500:]}"


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
_FINETUNE_KEYS = [
    "model",
    "weights",
    "data",
    "classes",
    "val_fraction",
    "max_per_class",
    "strict",
    "strategy",
    "epochs",
    "batch_size",
    "lr",
    "size",
    "augment",
    "amp",
    "device",
    "patience",
    "seed",
    "sizee",
]


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


@HYPOTHESIS
@given(mapping=st.dictionaries(st.text(max_size=10), _VALUES, max_size=4))
def test_run_random_yaml_mapping(cli_runner, mapping):
    """Any YAML mapping at the top level: a dry run plans it or refuses it in one line; never a crash."""
    code, _ = _run_yaml(cli_runner, yaml.safe_dump(mapping, allow_unicode=True))
    assert code == 2  # no random mapping is a valid pipeline: it needs runs: or stages:


@HYPOTHESIS
@given(key=st.sampled_from(_FINETUNE_KEYS), value=_VALUES)
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
    if code == 2 and key != "data":
        assert key in err or "unknown" in err or "class" in err, err
    if key == "sizee":
        assert code == 2 and "did you mean 'size'" in err
