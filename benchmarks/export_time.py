"""Time ``edgexfer export --int8 --quantizer auto`` on ResNet-18 224 px with 512 calibration images, per part.

Issue 13's target: under 3 minutes on 2 cores. The machine is often shared, so the script reports CPU seconds
(user + system of the export process, every thread) next to wall seconds; on two idle cores the wall time is
at least CPU / 2.

Each code tree given with ``--code`` (default: this checkout; e.g. an unpacked ``git archive`` of an older
commit for a before/after) runs the real export command in its own process, one after the other, on the
same random-weight ResNet-18 (``edgexfer.random_run.write_random_run``, seed 0), the same calibration and
held-out images. Parts are timed by wrapping the functions that do them (wall and CPU, inclusive: nested
parts are inside their parents, e.g. the judge's runs inside the recipe's method scoring); a function a
tree does not have is simply not timed. Afterwards the kept models of each tree are compared: their
recorded scores, and the calibration ranges side by side (the range caches of both runs).

    python benchmarks/export_time.py --code /tmp/old-tree --code . --label before --label after
    python benchmarks/export_time.py --compare OLD_RUN NEW_RUN [--rescore]   # two finished runs' ranges/models
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "calibration" / "fashion-mnist"
RESULTS = ROOT / "benchmarks" / "results"

# (label, module, attribute): the functions whose calls are timed; "Class.method" for methods
PARTS = [
    ("float export + parity", "edgexfer.stages.export.onnx_models", "float_model"),
    ("calibration ranges (one pass, every method)", "edgexfer.quant.ranges", "collect_ranges"),
    ("edgexfer recipe: methods + guard (per recipe)", "edgexfer.quant.guard", "quantize_target"),
    ("bias correction", "edgexfer.quant.bias_correction", "correct_biases"),
    ("candidate scoring (compete)", "edgexfer.quant.selection", "score_candidates"),
    ("evidence", "edgexfer.quant.evidence", "collect"),
]

# runs inside the child process: wraps PARTS, runs the CLI, writes the timings as JSON
CHILD = r"""
import json, sys, time, resource, importlib, functools
parts, out, argv = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:]
timings = {}

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

def timed(label, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        wall, start = time.perf_counter(), cpu()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = timings.setdefault(label, {"calls": 0, "wall_s": 0.0, "cpu_s": 0.0})
            entry["calls"] += 1
            entry["wall_s"] += time.perf_counter() - wall
            entry["cpu_s"] += cpu() - start
    return wrapper

import edgexfer.cli
import edgexfer.stages.export.int8  # noqa: F401  (everything the export imports by name is loaded now)
for label, module_name, attr in parts:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        continue
    original = getattr(module, attr, None)
    if original is None:
        continue
    wrapper = timed(label, original)
    for name, loaded in list(sys.modules.items()):  # every module that imported it by name
        if name.startswith("edgexfer") and loaded is not None:
            for key, value in list(vars(loaded).items()):
                if value is original:
                    setattr(loaded, key, wrapper)

try:
    from edgexfer.backends.int8_judge import Int8Judge
    original_logits = Int8Judge.logits
    def logits(self, model, inputs, batch_size):
        label = f"judge runs, target {self.target} ({self.scored_on})"
        wall, start = time.perf_counter(), cpu()
        try:
            return original_logits(self, model, inputs, batch_size)
        finally:
            entry = timings.setdefault(label, {"calls": 0, "wall_s": 0.0, "cpu_s": 0.0, "images": 0})
            entry["calls"] += 1
            entry["images"] += int(len(inputs))
            entry["wall_s"] += time.perf_counter() - wall
            entry["cpu_s"] += cpu() - start
    Int8Judge.logits = logits
except ImportError:
    pass

wall, start = time.perf_counter(), cpu()
code = edgexfer.cli.main(argv)
total = {"wall_s": time.perf_counter() - wall, "cpu_s": cpu() - start}
with open(out, "w") as f:
    json.dump({"parts": timings, "total": total, "exit": code}, f, indent=1)
"""


def run_tree(code: Path, label: str, work: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """Export with the code in ``code`` on a fresh random-weight run; its timings and kept models."""
    run_dir = work / f"run-{label}"
    shutil.rmtree(run_dir, ignore_errors=True)
    classes = tuple(sorted(p.name for p in args.calib.iterdir() if p.is_dir()))
    make_run = (
        "import sys; from edgexfer.random_run import write_random_run; from edgexfer.preprocess import Preprocess; "
        f"write_random_run({str(run_dir)!r}, 'resnet18', {list(classes)!r}, Preprocess.imagenet(224, augment='none'), "
        "seed=0)"
    )
    env = dict(os.environ, PYTHONPATH=str(code.resolve()))
    subprocess.run([sys.executable, "-c", make_run], env=env, check=True)
    out = work / f"timings-{label}.json"
    argv = ["-q", "export", str(run_dir), "--int8", "--quantizer", args.quantizer, "--target", args.target,
            "--calib", str(args.calib), "--calib-size", str(args.calib_size), "--eval-data", str(args.calib),
            "--no-shared-cache", "--no-progress"]
    print(f"[{label}] {code}: edgexfer {' '.join(argv)}", flush=True)
    subprocess.run([sys.executable, "-c", CHILD, json.dumps(PARTS), str(out)] + argv, env=env, check=True)
    result = json.loads(out.read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    kept = {}
    for name, artifact in manifest["artifacts"].items():
        if name.startswith("onnx_int8_"):
            m = artifact["metrics"]
            kept[name[len("onnx_int8_"):]] = {
                key: m.get(key) for key in ("quantizer", "calib_method", "int8_top1", "float_top1", "drop",
                                            "agreement", "eval_images", "scored_on", "stand_in",
                                            "method_score_images", "calib_seconds")
            }
            kept[name[len("onnx_int8_"):]]["sha256"] = artifact["sha256"]
            kept[name[len("onnx_int8_"):]]["path"] = str(run_dir / artifact["path"])
    result.update(code=str(code), kept=kept, run_dir=str(run_dir), ranges=_cached_ranges(run_dir))
    return result


def _cached_ranges(run_dir: Path) -> Dict[str, Dict[str, List[float]]]:
    """The calibration ranges the run cached, by method."""
    ranges = {}
    for path in (run_dir / "export" / "calib_cache").glob("*.json"):
        data = json.loads(path.read_text())
        ranges[data["info"]["method"]] = data["ranges"]
    return ranges


def compare_ranges(old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    """Per method: how far the new ranges are from the old, relative to the old range's width."""
    out = {}
    for method in sorted(set(old) & set(new)):
        names = sorted(set(old[method]) & set(new[method]))
        rel = []
        for name in names:
            (lo0, hi0), (lo1, hi1) = old[method][name], new[method][name]
            width = max(hi0 - lo0, 1e-12)
            rel.append(max(abs(lo1 - lo0), abs(hi1 - hi0)) / width)
        rel_array = np.asarray(rel)
        out[method] = {"tensors": len(names), "median_rel": float(np.median(rel_array)),
                       "p90_rel": float(np.quantile(rel_array, 0.9)), "max_rel": float(rel_array.max()),
                       "identical": int(np.sum(rel_array == 0))}
    return out


def rescore(paths: Dict[str, str], args: argparse.Namespace, code: Path) -> Dict[str, Any]:
    """Every kept model on ONNX Runtime over the same whole held-out slice (the export's own eval slice)."""
    script = r"""
import json, sys
import numpy as np
from edgexfer.backends.onnxruntime import session_logits
from edgexfer.compare import compare_logits
from edgexfer.data import folder_samples
from edgexfer.metrics import topk_accuracy
from edgexfer.preprocess import Preprocess
paths, calib, float_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
pre = Preprocess.imagenet(224, augment="none")
classes = sorted(p for p in __import__("os").listdir(calib) if not p.startswith("."))
samples = folder_samples(calib, class_names=classes)
inputs = np.stack([pre.to_array(samples.image(i)) for i in range(len(samples))])
labels = np.asarray(samples.labels)
ref = session_logits(float_path, inputs, 64)
out = {"images": int(len(labels)), "float_top1": topk_accuracy(ref, labels, 1)}
for name, path in paths.items():
    logits = session_logits(path, inputs, 64)
    out[name] = {"top1": topk_accuracy(logits, labels, 1), "agreement": compare_logits(ref, logits).top1_agreement}
print(json.dumps(out))
"""
    float_path = next(iter(paths.values())).rsplit("/", 1)[0] + "/model.onnx"
    env = dict(os.environ, PYTHONPATH=str(code.resolve()))
    done = subprocess.run([sys.executable, "-c", script, json.dumps(paths), str(args.calib), float_path], env=env,
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, action="append", help="a source tree to time (repeatable)")
    parser.add_argument("--label", action="append", help="a name per --code")
    parser.add_argument("--calib", type=Path, default=CALIB)
    parser.add_argument("--calib-size", type=int, default=512)
    parser.add_argument("--target", default="all")
    parser.add_argument("--quantizer", default="auto")
    parser.add_argument("--rescore", action="store_true", help="re-score every kept model on all held-out images")
    parser.add_argument("--work", type=Path, default=None, help="work folder to keep (default: a temp one)")
    parser.add_argument("--name", default="export_time_resnet18")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD_RUN", "NEW_RUN"),
                        help="only compare two finished runs' ranges and kept models (e.g. runs timed at once)")
    args = parser.parse_args()
    if args.compare:
        old, new = args.compare
        report = {"ranges_new_vs_old": compare_ranges(_cached_ranges(old), _cached_ranges(new))}
        paths = {f"{run.name}/{p.stem[len('model_int8_'):]}": str(p)
                 for run in (old, new) for p in sorted((run / "export").glob("model_int8_*.onnx"))}
        if args.rescore:
            report["rescored"] = rescore(paths, args, ROOT)
        print(json.dumps(report, indent=1))
        (RESULTS / f"{args.name}_compare.json").write_text(json.dumps(report, indent=1))
        return
    codes = args.code or [ROOT]
    labels = args.label or [c.name for c in codes]

    sys.path.insert(0, str(ROOT))
    from edgexfer.hardware import cpu_info, load_average

    work = args.work or Path(tempfile.mkdtemp(prefix="edgexfer-export-time-"))
    work.mkdir(parents=True, exist_ok=True)
    loads = [load_average()]
    results = {}
    for code, label in zip(codes, labels):
        results[label] = run_tree(code, label, work, args)
        loads.append(load_average())
    report: Dict[str, Any] = {"machine": platform.node(), "cpu": cpu_info().get("model"), "load_average": loads,
                              "args": {k: str(v) for k, v in vars(args).items()}, "results": results}
    if len(labels) > 1:
        first, last = results[labels[0]], results[labels[-1]]
        report["ranges_vs_first"] = compare_ranges(first["ranges"], last["ranges"])
    if args.rescore:
        paths = {f"{label}/{target}": kept["path"]
                 for label in labels for target, kept in results[label]["kept"].items()}
        report["rescored"] = rescore(paths, args, codes[-1])
    for result in results.values():
        result.pop("ranges")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=1))
    for label, result in results.items():
        print(f"\n== {label}: wall {result['total']['wall_s']:.0f} s, CPU {result['total']['cpu_s']:.0f} s")
        for part, t in sorted(result["parts"].items(), key=lambda kv: -kv[1]["cpu_s"]):
            print(f"  {part:70s} calls {t['calls']:3d}  wall {t['wall_s']:7.1f}  cpu {t['cpu_s']:7.1f}"
                  + (f"  images {t['images']}" if "images" in t else ""))
        for target, kept in result["kept"].items():
            print(f"  kept {target}: {kept['quantizer']} {kept['calib_method']} top-1 {kept['int8_top1']} "
                  f"agreement {kept['agreement']} on {kept['eval_images']} images ({kept['scored_on']})")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
