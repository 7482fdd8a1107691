"""Bad inputs tried on purpose, defined once for the tests (tests/integration/test_bad_input.py, in-process)
and the matrix (benchmarks/bad_input_matrix.py, real ``python -m edgexfer`` processes).

A :class:`Case` builds its argv inside a fresh :class:`Workspace` and says what a correct outcome is:

- ``error``: exit ``code`` (2 bad input, 4 backend unavailable), exactly one non-empty stderr line,
  starting with ``edgexfer: error:``, no traceback;
- ``usage``: click's option-parsing error (exit 2, ``Usage:`` + ``Error: ...``), no traceback;
- ``lenient``: the user asked for leniency (no ``--strict``): exit 0, the skipped files counted in the
  log and in the manifest;
- ``accept``: a valid but unusual input (CMYK, palette, 16-bit, alpha, 1x1, unicode path) that must work:
  exit 0 and the check passes.

:func:`classify` applies those rules; both the tests and the matrix use it, so they cannot disagree.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

ERROR_PREFIX = "edgexfer: error:"
STAGES = ("finetune", "export", "build", "predict", "verify", "bench", "run", "doctor", "deploy")


# ---- image and file writers ---------------------------------------------------------------------
def _pixels(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def write_png(path: Path, size: int = 32, seed: int = 0) -> Path:
    """A valid RGB PNG of random pixels."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(size, seed)).save(path)
    return path


def write_truncated_png(path: Path, size: int = 48) -> Path:
    """A PNG cut off in the middle of its image data."""
    write_png(path, size)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Any bytes under any name (zero-byte images, text files named .jpg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_huge_png_header(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A small PNG whose header claims ``width x height`` (400 Mpx): must be refused before decoding."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    # IHDR starts at byte 8: length(4) 'IHDR'(4) width(4) height(4) ... crc(4) over type+data.
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def write_mode_image(path: Path, mode: str, size: int = 32) -> Path:
    """A valid image in an unusual PIL mode: CMYK (JPEG), P (palette), I;16 (16-bit), RGBA, LA, 1x1."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_pixels(size, 3))
    if mode == "CMYK":
        rgb.convert("CMYK").save(path, format="JPEG")
    elif mode == "P":
        rgb.convert("P", palette=Image.ADAPTIVE, colors=16).save(path)
    elif mode == "I;16":
        Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).save(path)
    elif mode in ("RGBA", "LA"):
        rgb.convert(mode).save(path)
    else:
        raise ValueError(mode)
    return path


def write_image_folder(
    root: Path,
    classes: Sequence[str] = ("red", "green", "blue"),
    per_class: int = 4,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """``root/<class>/img_i.png``: a coloured square per class on noise (learnable, tiny)."""
    from PIL import Image

    colours = [(200, 40, 40), (40, 190, 60), (40, 60, 200), (200, 200, 40), (40, 200, 200)]
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
            pixels[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = colours[index % len(colours)]
            Image.fromarray(pixels).save(folder / f"img_{i:03d}.png")
    return root


# ---- the workspace each case runs in -------------------------------------------------------------
def make_base_run(root: Path) -> Path:
    """A run directory with an untrained resnet18 checkpoint (3 classes, 32x32, from
    ``tests/conftest.make_run_dir``), its float ONNX export and an ONNX Runtime fp32 build: what the
    predict/build/verify cases read."""
    from conftest import make_run_dir

    from edgexfer.stages.build import BuildConfig, run_build
    from edgexfer.stages.export import ExportConfig, run_export

    run = make_run_dir(root / "base_run")
    eval_data = write_image_folder(root / "base_eval", per_class=3)
    run_export(
        ExportConfig(run_dir=run, eval_data=eval_data, eval_size=9, progress=False, shared_cache=False)
    )
    run_build(BuildConfig(run_dir=run, backend="onnxruntime", precision="fp32", smoke=False, progress=False))
    assert (run / "export" / "model.onnx").is_file() and (run / "build").is_dir()
    return run


@dataclass
class Workspace:
    """A fresh folder per case plus a read-only base run (checkpoint + float ONNX)."""

    root: Path
    base_run: Path

    def run_copy(self) -> Path:
        """A private, writable copy of the base run (cases that may write into a run use this)."""
        target = self.root / "run"
        if not target.exists():
            shutil.copytree(self.base_run, target)
        return target

    @property
    def onnx(self) -> Path:
        """The base run's float ONNX model (read-only)."""
        return self.base_run / "export" / "model.onnx"

    def images(
        self, name: str = "imgs", classes: Sequence[str] = ("red", "green", "blue"), per_class: int = 3
    ) -> Path:
        """A good labelled folder under the workspace."""
        return write_image_folder(self.root / name, classes=classes, per_class=per_class)

    def path(self, *parts: str) -> Path:
        """A path under the workspace (not created)."""
        return self.root.joinpath(*parts)

    def yaml(self, text: str, name: str = "pipeline.yaml") -> Path:
        """A pipeline file with ``text``; ``{out}``/``{data}``: the workspace's out and image folders."""
        path = self.root / name
        data = self.images("ydata", per_class=3) if "{data}" in text else None
        path.write_text(
            text.replace("{out}", str(self.root / "pipe_out")).replace("{data}", str(data)), encoding="utf-8"
        )
        return path


Check = Callable[[Workspace, str, str], Optional[str]]


@dataclass(frozen=True)
class Case:
    """One bad input for one stage's CLI: ``make(ws)`` returns the argv after ``edgexfer -q``."""

    stage: str
    name: str
    make: Callable[[Workspace], List[str]]
    expect: str = "error"  # error | usage | lenient | accept
    code: int = 2
    check: Optional[Check] = None
    slow: bool = False
    # words the one error line must contain (case-insensitive), proving that the intended check fired:
    # the offending value or option plus a phrase of that check's message; workspace paths are masked
    # first, so a folder named after the case cannot supply them
    mentions: Tuple[str, ...] = field(default_factory=tuple)
    log_lines_ok: bool = False  # log warnings / step lines may precede the error line (still no traceback)
    xfail: str = ""  # why this case cannot pass on this branch yet (a strict xfail in the tests)

    @property
    def id(self) -> str:
        """``stage/name``, the pytest id and matrix row key."""
        return f"{self.stage}/{self.name}"


def classify(case: Case, ws: Workspace, code: int, stdout: str, stderr: str) -> Tuple[bool, str]:
    """(correct?, why): the rules in the module docstring, shared by tests and matrix."""
    if "Traceback" in stderr or "Traceback" in stdout:
        return False, "traceback shown"
    lines = [line for line in stderr.splitlines() if line.strip()]
    if case.expect == "error":
        if code != case.code:
            return False, f"exit {code}, expected {case.code}: {lines[-1] if lines else '(no stderr)'}"
        if not lines:
            return False, "nothing on stderr"
        if len(lines) != 1 and not case.log_lines_ok:
            return False, f"{len(lines)} stderr lines, expected 1: {lines[:4]}"
        error_lines = [line for line in lines if line.startswith(ERROR_PREFIX)]
        if len(error_lines) != 1 or not lines[-1].startswith(ERROR_PREFIX):
            return False, f"expected one last stderr line starting with '{ERROR_PREFIX}': {lines[-3:]}"
        masked = lines[-1].replace(str(ws.root), "<ws>").replace(str(ws.base_run), "<base>").lower()
        missing = [w for w in case.mentions if w.lower() not in masked]
        if missing:
            return False, f"error line does not mention {missing}: {lines[-1]}"
        return True, lines[-1]
    if case.expect == "usage":
        if code != 2:
            return False, f"exit {code}, expected 2 (usage error)"
        if not lines or not lines[0].startswith("Usage:") or not any(line.startswith("Error:") for line in lines):
            return False, f"not click's usage error format: {lines[:4]}"
        return True, next(line for line in lines if line.startswith("Error:"))
    if code != 0:
        return False, f"exit {code}, expected 0: {lines[-1] if lines else '(no stderr)'}"
    problem = case.check(ws, stdout, stderr) if case.check else None
    return (problem is None), (problem or ("skips counted" if case.expect == "lenient" else "handled"))


# ---- helpers for case definitions ---------------------------------------------------------------
# An argv token is a string or a function of the workspace that returns one (made when the case runs).
Token = Union[str, Callable[[Workspace], str]]


def argv(*tokens: Token) -> Callable[[Workspace], List[str]]:
    """A case's ``make``: the tokens, with workspace functions called in order."""
    return lambda ws: [t(ws) if callable(t) else t for t in tokens]


def run_copy(ws: Workspace) -> str:
    """A writable copy of the base run."""
    return str(ws.run_copy())


def base(ws: Workspace) -> str:
    """The read-only base run itself."""
    return str(ws.base_run)


def onnx(ws: Workspace) -> str:
    """The base run's float ONNX model."""
    return str(ws.onnx)


def at(*parts: str) -> Token:
    """A path under the workspace that does not exist."""
    return lambda ws: str(ws.path(*parts))


def empty_dir(*parts: str) -> Token:
    """An empty folder under the workspace."""
    return lambda ws: str(_mkdir(ws.path(*parts)))


def imgs(name: str = "imgs", classes: Sequence[str] = ("red", "green", "blue"), per_class: int = 3) -> Token:
    """A good labelled image folder under the workspace."""
    return lambda ws: str(ws.images(name, classes=classes, per_class=per_class))


def file(name: str, writer: Callable[[Path], Path], up: int = 0) -> Token:
    """A file written by ``writer``; ``up`` > 0 gives its parent folder (1) or grandparent (2) instead."""
    def make(ws: Workspace) -> str:
        path = writer(ws.path(*name.split("/")))
        return str(path.parents[up - 1] if up else path)

    return make


def raw(data: bytes) -> Callable[[Path], Path]:
    """A writer of exactly ``data``."""
    return lambda path: write_bytes(path, data)


def mode(image_mode: str) -> Callable[[Path], Path]:
    """A writer of a valid image in an unusual PIL mode."""
    return lambda path: write_mode_image(path, image_mode)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def finetune(data: Token, *extra: Token, out: Optional[Token] = None) -> Callable[[Workspace], List[str]]:
    """A tiny finetune command line (resnet18, random init, 32 px, 1 epoch) on ``data``, into ``out``."""
    out = out if out is not None else at("out")
    return argv("finetune", "--model", "resnet18", "--weights", "none", "--data", data, "--size", "32",
                "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress", "--out", out, *extra)


def bench(*options: str) -> Callable[[Workspace], List[str]]:
    """A bench command line with its work and output folders in the workspace."""
    return argv("bench", *options, "--work-dir", at("w"), "--out", at("o"))


def pipeline(text: str) -> Callable[[Workspace], List[str]]:
    """``run FILE --dry-run`` (so a wrongly accepted file cannot start training)."""
    return lambda ws: ["run", str(ws.yaml(text)), "--dry-run"]


_FT = "out: '{out}'\nruns:\n  main:\n    finetune: {model: resnet18, weights: W, data: '{data}', OPTS}\n"


def ft_pipeline(opts: str, weights: str = "none") -> Callable[[Workspace], List[str]]:
    """A one-run pipeline whose finetune stage has ``opts`` (valid otherwise)."""
    return pipeline(_FT.replace("OPTS", opts).replace("W", weights))


CORRUPT_FILES: Dict[str, Callable[[Path], Path]] = {
    "red/zero.jpg": raw(b""),
    "green/truncated.png": write_truncated_png,
    "blue/notes.jpg": raw(b"these are my notes, not a JPEG\n"),
}


def folder_with(
    bad: Dict[str, Callable[[Path], Path]], name: str = "data", extra_dirs: Sequence[str] = ()
) -> Token:
    """A good 3-class folder plus bad files ``{relative path: writer}`` and empty sub-folders."""
    def make(ws: Workspace) -> str:
        root = ws.images(name, per_class=4)
        for relative, writer in bad.items():
            writer(root / relative)
        for folder in extra_dirs:
            _mkdir(root / folder)
        return str(root)

    return make


def train_val_differ(ws: Workspace) -> str:
    """``train/`` with red, green, blue and ``val/`` with only cat, dog."""
    root = ws.path("tv")
    write_image_folder(root / "train", per_class=3)
    write_image_folder(root / "val", classes=("cat", "dog"), per_class=2)
    return str(root)


# ---- checks of the cases that must succeed ------------------------------------------------------
def check_skips(ws: Workspace, stdout: str, stderr: str) -> Optional[str]:
    """The 3 corrupt files are counted in the log and in the manifest's finetune record."""
    expected = len(CORRUPT_FILES)
    if f"skipped {expected} unusable file(s)" not in stderr:
        return f"log does not count {expected} skipped files: {stderr.strip().splitlines()[-3:]}"
    manifest = json.loads((ws.path("run ü ñ", "out") / "manifest.json").read_text(encoding="utf-8"))
    metrics = manifest.get("stages", {}).get("finetune", {}).get("metrics", {})
    if metrics.get("skipped_files") != expected:
        return f"manifest finetune metrics skipped_files={metrics.get('skipped_files')}, expected {expected}"
    return None


def check_predictions(count: int) -> Check:
    """``predict --json`` printed ``count`` predictions, each a 3-class distribution summing to 1."""
    def check(ws: Workspace, stdout: str, stderr: str) -> Optional[str]:
        try:
            predictions = json.loads(stdout).get("predictions", [])
        except ValueError:
            return f"stdout is not JSON: {stdout[:200]}"
        if len(predictions) != count:
            return f"{len(predictions)} predictions, expected {count}"
        for item in predictions:
            scores = [t["score"] for t in item["top"]]
            if len(scores) != 3 or abs(sum(scores) - 1.0) > 1e-4:
                return f"bad top-k for {item['image']}: {scores}"
        return None

    return check


def check_dry_run(ws: Workspace, stdout: str, stderr: str) -> Optional[str]:
    """The control pipeline is valid: a dry run plans its one finetune step and trains nothing."""
    if "dry run: 1 of 1 steps would run" not in stdout:
        return f"dry run did not plan 1 step: {stdout.strip()[-200:]}"
    if ws.path("pipe_out", "main", "finetune").exists():
        return "a dry run wrote a finetune folder"
    return None


def check_doctor_json(ws: Workspace, stdout: str, stderr: str) -> Optional[str]:
    """``doctor --json`` prints one JSON document that names the ONNX Runtime it found."""
    try:
        report = json.loads(stdout)
    except ValueError:
        return f"stdout is not JSON: {stdout[:200]}"
    return None if "onnxruntime" in json.dumps(report) else "doctor report does not mention onnxruntime"


UNUSUAL_IMAGES = {
    "cmyk.jpg": mode("CMYK"), "palette.png": mode("P"), "gray16.png": mode("I;16"), "rgba.png": mode("RGBA"),
    "la.png": mode("LA"), "tiny 1x1.png": lambda p: write_png(p, size=1),
    "ünïcødé ímage.png": lambda p: write_png(p, size=300),
}


# ---- the cases, one table per stage --------------------------------------------------------------
# fmt: off


def _finetune_cases() -> List[Case]:
    return [
        Case("finetune", "data_missing", finetune(at("nope")), mentions=("nope", "neither an existing folder")),
        Case("finetune", "data_is_a_file", finetune(file("one.png", write_png)), mentions=("one.png", "is a file")),
        Case("finetune", "data_no_class_folders", finetune(empty_dir("empty")),
             mentions=("<ws>/empty", "no class sub-folders")),
        Case("finetune", "empty_class_folder", finetune(folder_with({}, extra_dirs=("yellow",))),
             mentions=("yellow", "no readable images")),
        Case("finetune", "single_class", finetune(imgs("one", classes=("red",), per_class=6)),
             mentions=("at least 2 classes", "got 1")),
        Case("finetune", "class_of_text_files_named_jpg",
             finetune(folder_with({f"cats/{i}.jpg": raw(b"text") for i in range(3)})),
             mentions=("cats", "no readable images")),
        Case("finetune", "corrupt_files_strict", finetune(folder_with(CORRUPT_FILES), "--strict"),
             mentions=("notes.jpg", "--strict")),
        Case("finetune", "corrupt_files_lenient_unicode_path",
             finetune(folder_with(CORRUPT_FILES, name="data ü ñ"), out=at("run ü ñ", "out")),
             expect="lenient", check=check_skips, slow=True),
        Case("finetune", "class_with_one_image", finetune(imgs(per_class=1)), mentions=("too small", "split")),
        Case("finetune", "train_val_classes_differ", finetune(train_val_differ), mentions=("tv/val", "cat")),
        Case("finetune", "classes_selects_one", finetune(imgs(), "--classes", "0"),
             mentions=("--classes '0'", "at least 2")),
        Case("finetune", "negative_size", finetune(imgs(), "--size", "-32"), mentions=("size", "-32")),
        Case("finetune", "zero_epochs", finetune(imgs(), "--epochs", "0"), mentions=("epochs", "got 0")),
        Case("finetune", "negative_batch", finetune(imgs(), "--batch-size", "-4"), mentions=("batch", "-4")),
        Case("finetune", "negative_precise_bn", finetune(imgs(), "--precise-bn", "-5"),
             mentions=("precise_bn", "-5", "0 disables")),
        Case("finetune", "val_fraction_over_1", finetune(imgs(), "--val-fraction", "1.5"),
             mentions=("val_fraction", "1.5")),
        Case("finetune", "unknown_model", finetune(imgs(), "--model", "resnet1B"),
             mentions=("unknown model", "resnet1B")),
        Case("finetune", "unknown_timm_model", finetune(imgs(), "--model", "timm/repvgg_a9"),
             mentions=("unknown timm model", "timm/repvgg_a9", "timm/repvgg_a0", "timm.list_models")),
        # offline (tests/conftest.py sets HF_HUB_OFFLINE=1): which file to put where, never a traceback
        Case("finetune", "timm_weights_not_downloaded", finetune(imgs(), "--model", "timm/repvgg_a0",
                                                                 "--weights", "imagenet"),
             mentions=("timm/repvgg_a0", "huggingface-cli download timm/repvgg_a0.rvgg_in1k", "--weights PATH")),
        Case("finetune", "vit_at_a_size_it_refuses", finetune(imgs(), "--model", "vit_b_16"),
             mentions=("vit_b_16", "cannot go through finetune", "--size 224")),
        Case("finetune", "size_not_a_number", finetune(imgs(), "--size", "big"), expect="usage"),
        Case("finetune", "weights_file_not_a_checkpoint",
             finetune(imgs(), "--weights", file("w.pt", raw(b"x"))), mentions=("weights file", "w.pt")),
        Case("finetune", "resume_without_last", finetune(imgs(), "--resume"), mentions=("--resume", "last.pt")),
    ]


def _export_cases() -> List[Case]:
    int8_cpu = ("--int8", "--target", "cpu", "--no-progress")
    return [
        Case("export", "run_dir_missing", argv("export", at("no run")), mentions=("no run", "does not exist")),
        Case("export", "run_dir_without_manifest", argv("export", empty_dir("empty run")),
             mentions=("empty run", "no manifest.json")),
        Case("export", "manifest_not_json", argv("export", file("r/manifest.json", raw(b"{not json"), up=1)),
             mentions=("cannot read", "manifest.json")),
        Case("export", "checkpoint_changed_after_finetune",
             lambda ws: ["export", str(write_bytes(ws.run_copy() / "finetune" / "best.pt", b"x").parents[1])],
             mentions=("checkpoint", "changed since")),
        Case("export", "calib_folder_no_images",
             argv("export", run_copy, *int8_cpu, "--calib", empty_dir("calib"), "--eval-data", imgs()),
             mentions=("<ws>/calib", "has no images")),
        Case("export", "calib_folder_text_files_named_jpg",
             argv("export", run_copy, *int8_cpu, "--calib", file("calib/a.jpg", raw(b"not a jpeg"), up=1),
                  "--eval-data", imgs()), log_lines_ok=True, mentions=("a.jpg", "unreadable calibration image")),
        Case("export", "calib_folder_missing",
             argv("export", run_copy, *int8_cpu, "--calib", at("no calib"), "--eval-data", imgs()),
             mentions=("no calib", "does not exist")),
        Case("export", "eval_data_classes_differ",
             argv("export", run_copy, "--no-progress", "--eval-data", imgs(classes=("cat", "dog"))),
             mentions=("cat", "none of the classes")),
        Case("export", "opset_out_of_range", argv("export", run_copy, "--opset", "5"), mentions=("opset", "5")),
        Case("export", "negative_calib_size", argv("export", run_copy, "--int8", "--calib-size", "-1"),
             mentions=("calib", "size", "-1")),
        Case("export", "zero_batch_size", argv("export", run_copy, "--batch-size", "0"),
             mentions=("batch", "got 0")),
        Case("export", "uint8_layout_unknown",
             argv("export", run_copy, "--uint8-input", "--uint8-layout", "chw"),
             expect="usage"),
        Case("export", "quantizer_for_a_target_it_does_not_serve",
             argv("export", run_copy, *int8_cpu, "--quantizer", "nncf", "--calib", imgs(), "--eval-data", imgs()),
             mentions=("--quantizer nncf", "openvino", "not cpu")),
        Case("export", "quantizer_unknown", argv("export", run_copy, "--int8", "--quantizer", "bogus"),
             expect="usage"),
        Case("export", "frame_without_uint8_input", argv("export", run_copy, "--frame", "1080x1920"),
             mentions=("--frame 1080x1920", "--uint8-input")),
        Case("export", "frame_malformed", argv("export", run_copy, "--uint8-input", "--frame", "1080x"),
             mentions=("--frame '1080x'", "heightxwidth")),
        Case("export", "frame_zero_side", argv("export", run_copy, "--uint8-input", "--frame", "0x640"),
             mentions=("--frame 0x640", "1-16384")),
        # the base run's model crops 32x32: a 16x24 frame has nothing to crop from (refused before writing)
        Case("export", "frame_smaller_than_the_crop", argv("export", run_copy, "--uint8-input", "--frame", "16x24"),
             mentions=("--frame 16x24", "smaller than", "32x32 crop")),
        Case("export", "frame_format_unknown",
             argv("export", run_copy, "--uint8-input", "--frame", "64x64", "--frame-format", "yuv"),
             expect="usage"),
        Case("export", "frame_with_nchw_layout",
             argv("export", run_copy, "--uint8-input", "--uint8-layout", "nchw", "--frame", "64x64"),
             mentions=("--frame", "nhwc")),
        Case("export", "evidence_layers_negative", argv("export", run_copy, "--int8", "--evidence-layers", "-1"),
             mentions=("--evidence-layers", ">= 0", "got -1")),
        Case("export", "qat_epochs_negative", argv("export", run_copy, "--int8", "--qat-epochs", "-2"),
             mentions=("--qat-epochs", ">= 0", "got -2")),
        Case("export", "qat_lr_zero", argv("export", run_copy, "--int8", "--qat-epochs", "1", "--qat-lr", "0"),
             mentions=("--qat-lr", "> 0", "got 0")),
        Case("export", "qat_images_negative",
             argv("export", run_copy, "--int8", "--qat-epochs", "1", "--qat-images", "-5"),
             mentions=("--qat-images", ">= 0", "got -5")),
        Case("export", "qat_epochs_without_int8", argv("export", run_copy, "--qat-epochs", "1"),
             mentions=("--qat-epochs", "add --int8")),
        Case("export", "qat_quantizer_without_epochs",
             argv("export", run_copy, "--int8", "--quantizer", "edgexfer-qat"),
             mentions=("--quantizer edgexfer-qat", "--qat-epochs")),
        Case("export", "qat_next_to_another_named_quantizer",
             argv("export", run_copy, "--int8", "--quantizer", "edgexfer", "--qat-epochs", "1"),
             mentions=("--qat-epochs", "--quantizer auto", "--quantizer edgexfer alone")),
        # the base run holds random weights and no training split (tests/conftest.make_run_dir)
        Case("export", "qat_on_a_run_without_training_data",
             argv("export", run_copy, *int8_cpu, "--qat-epochs", "1", "--calib", imgs(), "--eval-data", imgs()),
             mentions=("--qat-epochs", "training split", "edgexfer finetune")),
    ]


def _build_cases() -> List[Case]:
    ort = ("--backend", "onnxruntime")
    return [
        Case("build", "unknown_backend", argv("build", run_copy, "--backend", "tensorflow"),
             mentions=("unknown backend", "tensorflow")),
        Case("build", "unknown_precision", argv("build", run_copy, *ort, "--precision", "fp8"),
             mentions=("precision", "fp8")),
        Case("build", "int8_without_int8_export", argv("build", run_copy, *ort, "--precision", "int8"),
             mentions=("onnx_int8_cpu", "--int8")),
        Case("build", "run_dir_missing", argv("build", at("nope"), *ort), mentions=("nope", "does not exist")),
        Case("build", "tensorrt_unavailable",
             argv("build", run_copy, "--backend", "tensorrt", "--precision", "fp16"),
             code=4, mentions=("tensorrt", "not usable")),
        Case("build", "option_of_another_backend", argv("build", run_copy, *ort, "--max-batch", "8"),
             mentions=("max", "batch", "tensorrt")),
        Case("build", "smoke_data_only_corrupt_images",
             argv("build", run_copy, *ort, "--smoke-data", file("smoke/red/a.jpg", raw(b""), up=2)),
             mentions=("smoke/red", "no readable images")),
        Case("build", "smoke_data_empty_folder",
             argv("build", run_copy, *ort, "--smoke-data", empty_dir("smoke")),
             mentions=("<ws>/smoke", "no class sub-folders")),
        Case("build", "negative_threads", argv("build", run_copy, *ort, "--threads", "-2", "--no-smoke"),
             mentions=("--threads", "-2")),
        Case("build", "zero_smoke_images", argv("build", run_copy, *ort, "--smoke-images", "0"),
             mentions=("smoke", "images", "got 0")),
    ]


def _predict_cases() -> List[Case]:
    def predict(*tokens: Token) -> Callable[[Workspace], List[str]]:
        return argv("predict", onnx, *tokens)

    good = file("a.png", write_png)
    return [
        Case("predict", "zero_byte_jpg", predict(file("z.jpg", raw(b""))), mentions=("z.jpg", "not an image")),
        Case("predict", "truncated_png", predict(file("t.png", write_truncated_png)),
             mentions=("t.png", "truncated")),
        Case("predict", "text_named_jpg", predict(file("notes.jpg", raw(b"hello\nworld\n"))),
             mentions=("notes.jpg", "not an image")),
        Case("predict", "huge_image_header_400mpx", predict(file("huge.png", write_huge_png_header)),
             mentions=("huge.png", "too large")),
        Case("predict", "huge_image_header_289mpx",
             predict(file("big.png", lambda p: write_huge_png_header(p, 17000, 17000))),
             mentions=("big.png", "too large")),
        Case("predict", "missing_image_unicode_name", predict(at("bïld ñ.png")),
             mentions=("bïld ñ.png", "does not exist")),
        Case("predict", "missing_image_newline_in_name", predict(at("two\nlines.png")),
             mentions=("two\\nlines.png", "does not exist")),
        # --debug as an argument's value, not the option: still the one-line error, no traceback
        Case("predict", "image_named_like_the_debug_option", predict("--", "--debug"),
             mentions=("'--debug'", "does not exist")),
        Case("predict", "folder_without_images", predict(file("d/a.txt", raw(b"x"), up=1)),
             mentions=("<ws>/d", "no image files")),
        Case("predict", "folder_with_one_corrupt_image",
             predict(folder_with({"red/t.png": write_truncated_png}, name="p")),
             mentions=("p/red/t.png", "truncated")),
        Case("predict", "target_missing", argv("predict", at("m.onnx"), good), mentions=("m.onnx", "does not exist")),
        Case("predict", "target_unknown_suffix", argv("predict", file("m.txt", raw(b"x")), good),
             mentions=("m.txt", "which runtime")),
        Case("predict", "target_onnx_is_garbage", argv("predict", file("m.onnx", raw(b"\x00garbage")), good),
             mentions=("m.onnx", "not a readable onnx model")),
        Case("predict", "zero_top_k", predict(good, "-k", "0"), mentions=("top-k", "got 0")),
        Case("predict", "zero_batch_size", predict(good, "--batch-size", "0"), mentions=("batch", "got 0")),
        Case("predict", "negative_threads", predict(good, "--threads", "-1"), mentions=("threads", "-1")),
        Case("predict", "negative_workers", predict(good, "--workers", "-1"), mentions=("--workers", "-1")),
        Case("predict", "negative_in_flight", predict(good, "--in-flight", "-1"), mentions=("--in-flight", "-1")),
        Case("predict", "json_and_jsonl", predict(good, "--json", "--jsonl"), mentions=("--json", "--jsonl")),
        Case("predict", "no_images_at_all", predict(), mentions=("image", "--list", "--video")),
        Case("predict", "video_missing", predict("--video", at("clip.avi")), mentions=("clip.avi", "does not exist")),
        Case("predict", "video_not_a_video", predict("--video", file("clip.avi", raw(b"not a video"))),
             mentions=("clip.avi", "cannot open video")),
        Case("predict", "video_and_images", predict(good, "--video", "0"), mentions=("--video", "leave out")),
        Case("predict", "glob_matching_nothing", predict(lambda ws: str(ws.path("none", "*.jpg"))),
             mentions=("<ws>/none/*.jpg", "matches no image files")),
        Case("predict", "list_file_missing", predict("--list", at("l.txt")), mentions=("l.txt", "cannot read")),
        Case("predict", "list_file_empty", predict("--list", file("l.txt", raw(b"# nothing\n\n"))),
             mentions=("l.txt", "names no images")),
        Case("predict", "list_file_names_a_missing_image",
             predict("--list", lambda ws: str(write_bytes(ws.path("l.txt"), str(ws.path("gone.png")).encode()))),
             mentions=("<ws>/gone.png", "does not exist")),
        Case("predict", "unknown_backend", predict(good, "--backend", "caffe"),
             mentions=("unknown backend", "caffe")),
        Case("predict", "run_dir_unknown_artifact",
             argv("predict", base, good, "--artifact", "tensorrt_int9"), mentions=("no artifact", "tensorrt_int9")),
        Case("predict", "cmyk_palette_16bit_alpha_tiny_unicode",
             predict(*[file(name, writer) for name, writer in UNUSUAL_IMAGES.items()], "--json"),
             expect="accept", check=check_predictions(len(UNUSUAL_IMAGES))),
    ]


def _verify_cases() -> List[Case]:
    quick = ("--no-latency", "--no-plots")
    return [
        Case("verify", "data_classes_differ",
             argv("verify", run_copy, "--data", imgs(classes=("cat", "dog")), *quick),
             mentions=("cat", "classes")),
        Case("verify", "data_missing", argv("verify", run_copy, "--data", at("nope")),
             mentions=("--data", "nope", "not a folder")),
        Case("verify", "data_only_corrupt_images",
             argv("verify", run_copy, *quick, "--data", file("v/red/a.png", write_truncated_png, up=2)),
             mentions=("v/red", "no readable images")),
        Case("verify", "run_dir_missing", argv("verify", at("nope")), mentions=("nope", "does not exist")),
        Case("verify", "zero_limit", argv("verify", run_copy, "--limit", "0"), mentions=("limit", "got 0")),
        Case("verify", "negative_max_drop", argv("verify", run_copy, "--max-drop", "-1"),
             mentions=("drop", "-1")),
        Case("verify", "min_agreement_over_100", argv("verify", run_copy, "--min-agreement", "150"),
             mentions=("agreement", "150")),
        Case("verify", "max_drop_not_a_number", argv("verify", run_copy, "--max-drop", "lots"),
             expect="usage"),
        Case("verify", "gate_on_unknown", argv("verify", run_copy, "--gate-on", "mean"), expect="usage"),
        Case("verify", "gate_on_ci_without_max_drop", argv("verify", run_copy, "--gate-on", "ci"),
             mentions=("--gate-on ci", "--max-drop")),
        Case("verify", "negative_max_class_drop", argv("verify", run_copy, "--max-class-drop", "-1"),
             mentions=("--max-class-drop", "-1")),
        Case("verify", "zero_max_p99_ms", argv("verify", run_copy, "--max-p99-ms", "0"),
             mentions=("--max-p99-ms", "positive")),
        Case("verify", "min_speedup_without_latency", argv("verify", run_copy, "--min-speedup", "2", "--no-latency"),
             mentions=("--min-speedup", "--no-latency")),
    ]


def _bench_cases() -> List[Case]:
    r18 = ("--model", "resnet18")
    return [
        Case("bench", "zero_batch", bench(*r18, "--batch", "0"), mentions=("batch", "[0]")),
        Case("bench", "batch_not_a_number", bench(*r18, "--batch", "eight"), mentions=("--batch", "eight")),
        Case("bench", "unknown_backend", bench(*r18, "--backend", "caffe"), mentions=("unknown backend", "caffe")),
        Case("bench", "unknown_precision", bench(*r18, "--precision", "fp7"), mentions=("precision", "fp7")),
        Case("bench", "negative_size", bench(*r18, "--size", "-224"), mentions=("size", "-224")),
        Case("bench", "negative_min_time", bench(*r18, "--min-time", "-1"), mentions=("--min-time", "-1")),
        Case("bench", "zero_min_iterations", bench(*r18, "--min-iterations", "0"),
             mentions=("--min-iterations", "got 0")),
        Case("bench", "unknown_model", bench("--model", "resnet1B"), mentions=("unknown model", "resnet1B")),
        Case("bench", "frame_not_hxw", bench(*r18, "--frame", "1080p"), mentions=("--frame", "1080p", "HEIGHTxWIDTH")),
        Case("bench", "frame_smaller_than_crop", bench(*r18, "--frame", "100x100"),
             mentions=("--frame 100x100", "smaller than", "224x224")),
        Case("bench", "frame_with_float_input", bench(*r18, "--frame", "240x320", "--float-input"),
             mentions=("--frame", "--float-input")),
        Case("bench", "frame_run_has_none", lambda ws: bench("--run", str(ws.base_run), "--frame", "240x320")(ws),
             mentions=("no raw-frame build of 240x320", "--source onnx_frame")),
        Case("bench", "run_dir_missing", lambda ws: bench("--run", str(ws.path("nope")))(ws),
             mentions=("nope", "does not exist")),
        Case("bench", "calibration_folder_no_images",
             lambda ws: bench(*r18, "--precision", "int8", "--backend", "onnxruntime", "--calibration",
                              str(_mkdir(ws.path("no_cal_images"))))(ws),
             mentions=("no_cal_images", "calibration folder", "has no images")),
    ]


# A pipeline whose every stage is valid, for cases that spoil one key of one stage (STAGE_KEYS).
_FULL = ("out: '{out}'\nruns:\n  main:\n    finetune: {weights: none, data: '{data}', epochs: 1}\n"
         "    export: EXPORT\n    build: [BUILD]\n    verify: VERIFY\n")


def full_pipeline(export: str = "{}", build: str = "{backend: onnxruntime}", verify: str = "{}") -> Callable:
    """A finetune-export-build-verify pipeline (dry run) with these options for the later stages."""
    return pipeline(_FULL.replace("EXPORT", export).replace("BUILD", build).replace("VERIFY", verify))


def _run_cases() -> List[Case]:
    return [
        Case("run", "file_missing", argv("run", at("nope.yaml")), mentions=("nope.yaml", "does not exist")),
        Case("run", "file_empty", argv("run", file("e.yaml", raw(b""))), mentions=("e.yaml", "is empty")),
        Case("run", "file_binary", argv("run", file("b.yaml", raw(bytes(range(256))))),
             mentions=("b.yaml", "not utf-8")),
        Case("run", "yaml_syntax_error", pipeline("runs:\n  main: {finetune: [unclosed\n"),
             mentions=("not valid yaml", "line 3")),
        Case("run", "yaml_is_a_list", pipeline("- finetune\n- export\n"), mentions=("must hold a mapping", "list")),
        Case("run", "unknown_top_level_key", pipeline("runz:\n  main: {finetune: {}}\n"),
             mentions=("unknown key 'runz'", "did you mean 'runs'")),
        Case("run", "key_with_line_break", pipeline('"runs\\r\\nx": {}\n'), mentions=("unknown key", "\\r\\n")),
        Case("run", "unknown_stage", pipeline("runs:\n  main:\n    finetun: {epochs: 1}\n"),
             mentions=("unknown key 'finetun'", "did you mean 'finetune'")),
        Case("run", "mistyped_key", ft_pipeline("epoch: 1"),
             mentions=("unknown key 'epoch'", "did you mean 'epochs'")),
        Case("run", "wrong_type", ft_pipeline("epochs: three"), mentions=("epochs", "'three'", "integer")),
        Case("run", "negative_size", ft_pipeline("size: -32"), mentions=("stage 'finetune'", "size", "-32")),
        Case("run", "bool_for_int", ft_pipeline("batch_size: true"), mentions=("batch_size", "integer", "true")),
        Case("run", "build_not_a_list_of_mappings",
             pipeline("runs:\n  main:\n    finetune: {weights: none, data: '{data}'}\n"
                      "    build: [onnxruntime]\n"),
             mentions=("stage 'build'", "must be a mapping, got str")),
        Case("run", "mistyped_build_key",
             pipeline("out: '{out}'\nruns:\n  main:\n    finetune: {weights: none, data: '{data}'}\n"
                      "    build: [{backend: onnxruntime, precison: int8}]\n"),
             mentions=("unknown key 'precison'", "did you mean 'precision'")),
        Case("run", "weights_names_no_run", ft_pipeline("epochs: 1", weights="'@ghost'"),
             mentions=("'@ghost'", "names no run")),
        # Not a dry run: a dry run only plans (it opens no data folder); the step line precedes the error.
        Case("run", "data_folder_missing",
             lambda ws: ["run", str(ws.yaml("out: '{out}'\nruns:\n  main:\n    finetune: {weights: none, "
                                            "data: /nonexistent/ünï data, epochs: 1}\n"))],
             mentions=("/nonexistent/ünï data", "neither an existing folder"), log_lines_ok=True),
        Case("run", "valid_file_control", ft_pipeline("epochs: 1"), expect="accept", check=check_dry_run),
        Case("run", "force_unknown_stage",
             lambda ws: ft_pipeline("epochs: 1")(ws) + ["--force", "finetunes"],
             mentions=("--force 'finetunes'", "names no stage")),
        # keys are the commands' long options (issue 15): the old config-field names are refused
        Case("run", "config_field_name_not_option", full_pipeline(verify="{bootstrap_resamples: 100}"),
             mentions=("unknown key 'bootstrap_resamples'", "stage 'verify'", "did you mean 'bootstrap'")),
        Case("run", "backend_options_as_mapping",
             full_pipeline(build="{backend: tensorrt, options: {workspace_mb: 1024}}"),
             mentions=("unknown key 'options'", "stage 'build'", "workspace_mb")),
        Case("run", "flag_not_true_or_false", full_pipeline(export="{int8: 'yes'}"),
             mentions=("stage 'export'", "int8 must be true or false", "'yes'")),
        Case("run", "repeatable_option_given_a_mapping", full_pipeline(verify="{backends: {onnxruntime: 1}}"),
             mentions=("stage 'verify'", "backends takes values, not a mapping")),
        Case("run", "run_dir_set_in_a_step", full_pipeline(export="{run_dir: elsewhere}"),
             mentions=("stage 'export'", "'run_dir' is set by the pipeline")),
        Case("run", "when_available_on_export", full_pipeline(export="{when_available: true}"),
             mentions=("stage 'export'", "when_available applies to build steps only")),
        Case("run", "option_of_another_backend", full_pipeline(build="{backend: onnxruntime, max_batch: 8}"),
             mentions=("stage 'build'", "max", "tensorrt")),
        Case("run", "two_builds_of_one_artifact",
             full_pipeline(build="{backend: onnxruntime}, {backend: onnxruntime, precision: fp32}"),
             mentions=("two build steps", "build:onnxruntime_fp32")),
    ]


def _doctor_cases() -> List[Case]:
    return [
        Case("doctor", "unknown_option", argv("doctor", "--gpu-only"), expect="usage"),
        Case("doctor", "extra_argument", argv("doctor", "now"), expect="usage"),
        Case("doctor", "json_control", argv("doctor", "--json"), expect="accept", check=check_doctor_json),
    ]

def closed_port_ssh_config(ws: Workspace) -> str:
    """An ssh config (ssh -F) whose Host 'device' is 127.0.0.1 on a port nobody listens on."""
    import socket

    with socket.socket() as sock:  # a port just free: connecting to it is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = ws.path("ssh_config")
    path.write_text(f"Host device\n  HostName 127.0.0.1\n  Port {port}\n  UserKnownHostsFile {ws.path('kh')}\n",
                    encoding="utf-8")
    return str(path)


def _deploy_cases() -> List[Case]:
    to = ("--to", "device:/tmp/never-written")
    return [
        Case("deploy", "no_to", argv("deploy", run_copy), mentions=("at least one --to",)),
        Case("deploy", "to_is_an_ssh_option", argv("deploy", run_copy, "--to", "-oProxyCommand=touch x"),
             mentions=("-oProxyCommand", "not [user@]host")),
        Case("deploy", "to_has_a_space", argv("deploy", run_copy, "--to", "my host"),
             mentions=("my host", "not [user@]host")),
        Case("deploy", "run_dir_missing", argv("deploy", at("nope"), *to), mentions=("nope", "does not exist")),
        Case("deploy", "unknown_backend", argv("deploy", run_copy, *to, "--backend", "tflite"),
             mentions=("tflite", "unknown backend")),
        Case("deploy", "unknown_precision", argv("deploy", run_copy, *to, "--precision", "fp8"),
             mentions=("fp8", "precision")),
        Case("deploy", "keep_and_purge", argv("deploy", run_copy, *to, "--keep", "--purge"),
             mentions=("--keep", "--purge")),
        Case("deploy", "ssh_config_missing", argv("deploy", run_copy, *to, "--ssh-config", at("nope.conf")),
             mentions=("--ssh-config", "nope.conf", "not a file")),
        Case("deploy", "same_device_twice", argv("deploy", run_copy, "--to", "a", "--to", "me@a:x"),
             mentions=("same device twice",)),
        Case("deploy", "zero_limit", argv("deploy", run_copy, *to, "--limit", "0"), mentions=("limit", "got 0")),
        Case("deploy", "unreachable_host",
             argv("deploy", run_copy, *to, "--ssh-config", closed_port_ssh_config),
             mentions=("device", "unreachable", "connection refused")),
        Case("deploy", "copy_mode_unknown", argv("deploy", run_copy, *to, "--copy", "ftp"), expect="usage"),
        Case("deploy", "wheelhouse_without_setup", argv("deploy", run_copy, *to, "--wheelhouse", at(".")),
             mentions=("--wheelhouse", "--setup")),
        Case("deploy", "wheelhouse_without_wheels", argv("deploy", run_copy, *to, "--setup", "--wheelhouse",
                                                         empty_dir("wheels")), mentions=("--wheelhouse", ".whl")),
    ]
# fmt: on


CASES: List[Case] = [
    *_finetune_cases(), *_export_cases(), *_build_cases(), *_predict_cases(), *_verify_cases(),
    *_bench_cases(), *_run_cases(), *_doctor_cases(), *_deploy_cases(),
]
