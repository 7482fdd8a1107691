#!/usr/bin/env python3
"""``make gpu-check``: the one check to run first on any machine with an NVIDIA GPU (issue 10).

It sets up a venv with edgexfer[tensorrt] and Polygraphy (reusing a CUDA torch that is already there),
records the environment (``edgexfer doctor --json``, TensorRT / CUDA / driver), takes the demo's target
run (or trains a fresh small one on the embedded data), exports it (float, uint8 NHWC, TensorRT INT8),
builds TensorRT fp32 / fp16 / int8 from the float input and fp32 / fp16 from the uint8 input with
``--min-batch 2``, runs ``edgexfer verify`` on both, runs every engine on a remainder batch (9 images
through a 2..8 profile) against ONNX Runtime, runs ``edgexfer bench`` with TensorRT rows, the GPU tests,
times the same engine with trtexec / Polygraphy where installed next to edgexfer's runner, and checks
the INT8 ONNX with ``polygraphy run --trt --onnxrt``. Each step's failure is reported and the next step
still runs where it can; a table closes the run, results go to benchmarks/results/<gpu>.md/.json and the
exit code is 0 only when every step that ran passed. Without a GPU it prints one line and exits 0.

    python3 scripts/gpu_check.py [--dry-run] [--venv .venv] [--run runs/demo/target] [--budget 480]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "gpu-check"
PRECISIONS = ("fp32", "fp16", "int8")
TIMED_BATCH = 8
INCONCLUSIVE_EXIT = 5  # edgexfer verify: the reference is at chance (README, exit codes)
RATIO_TARGET = 1.05  # edgexfer's enqueue time vs trtexec's GPU compute time, same engine and batch


def gpu_name() -> Optional[str]:
    """The first NVIDIA GPU's name (nvidia-smi), 'jetson' on a Jetson, None without a GPU."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        if out:
            return out.splitlines()[0].strip()
    if Path("/etc/nv_tegra_release").is_file():
        return "jetson"
    return None


def slug(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200' (the results file name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def parse_trtexec(text: str) -> Optional[float]:
    """Median GPU compute time in ms from trtexec's performance summary."""
    match = re.search(r"GPU Compute Time:.*?median = ([0-9.]+) ms", text)
    return float(match.group(1)) if match else None


def parse_polygraphy_time(text: str) -> Optional[float]:
    """Polygraphy's 'Average inference time: X ms' (TrtRunner, copies included)."""
    match = re.search(r"Average inference time: ([0-9.]+) ms", text)
    return float(match.group(1)) if match else None


class Check:
    """Runs the steps, records each, never stops at the first failure."""

    def __init__(self, python: str, dry_run: bool, budget: float, logs: Path) -> None:
        self.python, self.dry_run, self.logs = python, dry_run, logs
        self.deadline = time.monotonic() + budget
        self.rows: List[Dict[str, Any]] = []
        self.facts: Dict[str, Any] = {}

    def edgexfer(self, *args: str) -> List[str]:
        return [self.python, "-m", "edgexfer", *args]

    def step(self, name: str, command: List[str], timeout: float = 300, needs: str = "",
             inconclusive_ok: bool = False) -> Dict[str, Any]:
        """Run ``command``; record pass / fail / skip with its time and the log's last line. With
        ``inconclusive_ok``, exit 5 (edgexfer verify: the float reference is at chance on these images, so
        parity cannot be judged) is recorded as "inconclusive", not as a failure of the GPU path."""
        row: Dict[str, Any] = {"step": name, "command": " ".join(command), "status": "skip", "seconds": 0.0}
        failed = [r["step"] for r in self.rows if r["status"] == "fail" and needs and r["step"].startswith(needs)]
        if self.dry_run:
            shown = [Path(c).name if c == self.python else ("<probe>" if "\n" in c else c) for c in command]
            row["detail"] = "dry run: $ " + " ".join(shown)
        elif failed:
            row["detail"] = f"needs {needs}, which failed"
        elif time.monotonic() > self.deadline:
            row["detail"] = "time budget spent"
        else:
            start = time.monotonic()
            try:
                proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                      timeout=min(timeout, max(10.0, self.deadline - start)))
                output, rc = proc.stdout + proc.stderr, proc.returncode
            except subprocess.TimeoutExpired as exc:
                output, rc = f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {exc.timeout:.0f}s", 124
            except OSError as exc:
                output, rc = str(exc), 127
            status = "pass" if rc == 0 else ("inconclusive" if rc == INCONCLUSIVE_EXIT and inconclusive_ok else "fail")
            row.update(seconds=round(time.monotonic() - start, 1), status=status, rc=rc)
            log = self.logs / (slug(name) + ".log")
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"$ {row['command']}\n{output}")
            lines = [line for line in output.strip().splitlines() if line.strip()]
            row["detail"], row["output"] = (lines[-1][:200] if lines else ""), output
        print(f"[{row['status']:>4}] {name:<44} {row['seconds']:7.1f}s  {row.get('detail', '')}", flush=True)
        self.rows.append(row)
        return row

    def note(self, name: str, status: str, detail: str) -> None:
        print(f"[{status:>4}] {name:<44} {0.0:7.1f}s  {detail}", flush=True)
        self.rows.append({"step": name, "status": status, "seconds": 0.0, "detail": detail, "command": ""})


def ensure_venv(args: argparse.Namespace) -> Dict[str, Any]:
    """A venv with edgexfer[train,tensorrt,dev] + polygraphy (train: the check fine-tunes and exports);
    reuses a working one and a system CUDA torch."""
    venv = (ROOT / args.venv).resolve()
    python = venv / "bin" / "python"
    probe = "import tensorrt, polygraphy, torch, edgexfer; print(tensorrt.__version__)"
    if python.is_file() and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0:
        return {"python": str(python), "install_seconds": 0.0, "install": "reused"}
    commands = []
    if not python.is_file():
        torch_ok = subprocess.run([sys.executable, "-c", "import torch,sys; sys.exit(not torch.cuda.is_available())"],
                                  capture_output=True).returncode == 0
        flags = ["--system-site-packages"] if torch_ok else []  # reuse the installed CUDA torch (GBs)
        commands.append([sys.executable, "-m", "venv", *flags, str(venv)])
    commands += [[str(python), "-m", "pip", "install", "--upgrade", "pip"],
                 [str(python), "-m", "pip", "install", "-e", f"{ROOT}[train,tensorrt,dev]", "polygraphy"]]
    start = time.monotonic()
    for command in commands:
        print("install: " + " ".join(command), flush=True)
        if args.dry_run:
            continue
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            return {"python": str(python), "install_seconds": time.monotonic() - start, "install": "failed"}
    seconds = round(time.monotonic() - start, 1)
    print(f"install: {seconds:.1f}s", flush=True)
    return {"python": str(python), "install_seconds": seconds, "install": "dry run" if args.dry_run else "installed"}


def prepare_run(check: Check, args: argparse.Namespace) -> Path:
    """The demo's target run when it exists, else a fresh 1-epoch run on the embedded data; exported."""
    given = ROOT / args.run
    run = WORK / "run"
    if (given / "manifest.json").is_file() and not check.dry_run:
        if run.exists():
            shutil.rmtree(run)
        shutil.copytree(given, run, ignore=shutil.ignore_patterns("build", "verify"))
        check.note("run: reuse " + args.run, "pass", f"copied to {run.relative_to(ROOT)}")
    else:
        check.step("finetune (1 epoch, embedded data)", check.edgexfer(
            "finetune", "--model", "resnet18", "--weights", "none", "--data", "embedded", "--classes", "5-9",
            "--size", "32", "--epochs", "1", "--max-per-class", "60", "--out", str(run)), timeout=400)
    check.step("export float + uint8 NHWC + TensorRT INT8", check.edgexfer(
        "export", str(run), "--int8", "--target", "tensorrt", "--uint8-input", "--uint8-layout", "nhwc",
        "--max-drop", "100", "--calib-size", "256"), timeout=400, needs="finetune")
    judged_on_engine(check, run)
    return run


def judged_on_engine(check: Check, run: Path) -> None:
    """With TensorRT here, export must have scored the INT8 candidates on engines, not ONNX Runtime."""
    manifest = run / "manifest.json"
    if check.dry_run or not manifest.is_file():
        return
    record = json.loads(manifest.read_text()).get("artifacts", {}).get("onnx_int8_tensorrt")
    if not record:
        return check.note("INT8 judged on a TensorRT engine", "fail", "no onnx_int8_tensorrt record")
    metrics = record.get("metrics", {})
    on_engine = not metrics.get("stand_in", True) and str(metrics.get("scored_on", "")).startswith("tensorrt")
    detail = f"scored on {metrics.get('scored_on')}; guarded layers in " + str(
        metrics.get("scoring", {}).get("float_layers_precision"))
    check.note("INT8 judged on a TensorRT engine", "pass" if on_engine else "fail", detail)


def build_and_verify(check: Check, run: Path) -> List[Path]:
    """TensorRT builds from the float and the uint8 input (min batch 2), then verify on both runs."""
    uint8_run = WORK / "run_uint8"
    if not check.dry_run and (run / "manifest.json").is_file():
        if uint8_run.exists():
            shutil.rmtree(uint8_run)
        shutil.copytree(run, uint8_run)
    profile = ["--min-batch", "2", "--max-batch", str(TIMED_BATCH)]
    engines = []
    for precision in PRECISIONS:
        check.step(f"build tensorrt {precision} (float input)", check.edgexfer(
            "build", str(run), "--backend", "tensorrt", "--precision", precision, *profile), needs="export")
        engines.append(run / "build" / f"tensorrt_{precision}.engine")
    for precision in ("fp32", "fp16"):  # int8 from the uint8 input is bench's uint8 variant (below)
        check.step(f"build tensorrt {precision} (uint8 NHWC input)", check.edgexfer(
            "build", str(uint8_run), "--backend", "tensorrt", "--precision", precision, "--source", "onnx_uint8",
            *profile), needs="export")
        engines.append(uint8_run / "build" / f"tensorrt_{precision}.engine")
    for name, path in (("float", run), ("uint8", uint8_run)):
        check.step(f"verify ({name} input, batch 9: remainder)", check.edgexfer(
            "verify", str(path), "--batch-size", "9", "--out", str(WORK / f"verify_{name}")), timeout=400,
            needs="build", inconclusive_ok=True)
    return engines


PROBE = r"""
import json, sys, time, numpy as np, onnxruntime
from edgexfer.backends import get_backend
engine, onnx_path, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {}
with get_backend("tensorrt").load(engine) as runner:
    shape = [9] + ([3, runner._spatial[0], runner._spatial[1]] if runner.input_layout == "NCHW"
                   else [runner._spatial[0], runner._spatial[1], 3])
    rng = np.random.default_rng(0)
    if runner.input_dtype == np.uint8:
        x = rng.integers(0, 255, shape).astype(np.uint8)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    got = np.concatenate([runner.infer(x[:9]), runner.infer(x[:1])])
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    ref = session.run(None, {session.get_inputs()[0].name: np.concatenate([x[:9], x[:1]])})[0]
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
    out.update(min_cosine=float(cos.min()), top1=float((got.argmax(1) == ref.argmax(1)).mean()),
               profile=runner.describe()["profile_batch"], device_memory=runner.describe()["device_memory"])
    xb = np.ascontiguousarray(x[:batch] if batch <= 9 else np.resize(x, [batch] + shape[1:]))
    for _ in range(50):
        runner.infer(xb)
    times = []
    for _ in range(200):
        t = time.perf_counter()
        runner.infer(xb)
        times.append(time.perf_counter() - t)
    out["infer_ms"] = 1000 * float(np.median(times))
    ctx, mem = runner._objects["context"], runner._objects["memory"]
    runner._run(xb)  # binds shapes and addresses for batch; then time enqueue + sync only
    times = []
    for _ in range(200):
        t = time.perf_counter()
        ctx.execute_async_v3(mem.stream_handle())
        mem.synchronize()
        times.append(time.perf_counter() - t)
    out["enqueue_ms"] = 1000 * float(np.median(times))
print("PROBE " + json.dumps(out))
"""


def probe_engines(check: Check, engines: List[Path], run: Path) -> None:
    """Each engine on 9 + 1 images vs ONNX Runtime, then timed; trtexec / Polygraphy on the same engine."""
    for engine in engines:
        precision = engine.stem.split("_")[-1]
        uint8 = engine.parent.parent.name == "run_uint8"
        model = "model_int8_tensorrt.onnx" if precision == "int8" else "model.onnx"
        model = "model_uint8_nhwc.onnx" if uint8 else model
        onnx_path = engine.parent.parent / "export" / model
        label = f"{precision} ({'uint8' if uint8 else 'float'} input)"
        row = check.step(f"remainder batch + timing {label}", [check.python, "-c", PROBE, str(engine),
                                                              str(onnx_path), str(TIMED_BATCH)], needs="build")
        facts = json.loads(row["output"].split("PROBE ", 1)[1]) if "PROBE " in row.get("output", "") else {}
        if facts and facts["min_cosine"] < {"fp32": 0.999, "fp16": 0.99, "int8": 0.9}[precision]:
            row["status"], row["detail"] = "fail", f"min cosine {facts['min_cosine']:.4f} vs ONNX Runtime"
        elif facts:
            row["detail"] = (f"cosine {facts['min_cosine']:.4f}, infer {facts['infer_ms']:.3f} ms, "
                             f"enqueue {facts['enqueue_ms']:.3f} ms (b{TIMED_BATCH})")
        check.facts.setdefault("engines", {})[label] = facts
        if uint8 or not facts:
            continue
        shape = f"input:{TIMED_BATCH}x3x32x32"
        if shutil.which("trtexec"):
            trtexec = check.step(f"trtexec {label}", ["trtexec", f"--loadEngine={engine}", f"--shapes={shape}",
                                                       "--iterations=500", "--warmUp=500"], needs="build")
            gpu_ms = parse_trtexec(trtexec.get("output", ""))
            if gpu_ms:
                ratio = facts["enqueue_ms"] / gpu_ms
                trtexec["status"] = "pass" if ratio <= RATIO_TARGET else "fail"
                trtexec["detail"] = (
                    f"GPU compute {gpu_ms:.3f} ms; edgexfer/trtexec {ratio:.2f}x (target {RATIO_TARGET})"
                )
        else:
            check.note(f"trtexec {label}", "skip", "trtexec not installed")
        poly = check.step(f"polygraphy timing {label}", [str(Path(check.python).parent / "polygraphy"), "run",
                          str(engine), "--model-type", "engine", "--trt", "--input-shapes",
                          f"input:[{TIMED_BATCH},3,32,32]", "--iterations", "200"], needs="build")
        poly_ms = parse_polygraphy_time(poly.get("output", ""))
        if poly_ms:
            poly["detail"] = f"Polygraphy {poly_ms:.3f} ms, edgexfer infer {facts['infer_ms']:.3f} ms (copies included)"
        check.facts.setdefault("timing", {})[label] = {**facts, "polygraphy_ms": poly_ms}


def bench_rows(row: Dict[str, Any], path: Path) -> None:
    """bench reports a backend it could not build as skipped and still exits 0: require TensorRT rows."""
    if row["status"] != "pass":
        return
    try:
        results = json.loads(path.read_text())["results"]
    except (OSError, ValueError, KeyError) as exc:
        row.update(status="fail", detail=f"no bench results in {path.name}: {exc}")
        return
    trt = [r for r in results if r.get("backend") == "tensorrt"]
    bad = [f"{r.get('precision')} b{r.get('batch')}: {r.get('error', r.get('status'))}" for r in trt
           if r.get("status") != "ok"]
    if not trt or bad:
        row.update(status="fail", detail="TensorRT rows: " + ("; ".join(bad) if bad else "none"))
    else:
        row["detail"] = "TensorRT rows: " + ", ".join(
            f"{r['precision']} b{r['batch']} {r['latency']['p50_ms']:.3f} ms" for r in trt)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--venv", default=".venv")
    parser.add_argument("--run", default="runs/demo/target", help="run to reuse when it exists")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the checks after install")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    name = gpu_name()
    if name is None and not args.dry_run:
        print("gpu-check: no NVIDIA GPU here (nvidia-smi lists none, not a Jetson); nothing to check")
        return 0
    name = name or "dry-run"
    print(f"gpu-check on {name}" + (" (dry run: the plan, nothing is run)" if args.dry_run else ""), flush=True)
    setup = ensure_venv(args)
    check = Check(setup["python"], args.dry_run, args.budget, WORK / "logs")
    if setup["install"] == "failed":
        check.note("install edgexfer[tensorrt] + polygraphy", "fail", "pip failed (see above)")
    check.step("doctor --json", check.edgexfer("doctor", "--json"), timeout=120)
    check.step("versions: tensorrt, cuda, driver", [check.python, "-c",
               "import json, tensorrt; from edgexfer.backends.trt_runtime import trt_machine; "
               "print(json.dumps(trt_machine(tensorrt)))"], timeout=120)
    run = prepare_run(check, args)
    engines = build_and_verify(check, run)
    probe_engines(check, engines, run)
    bench = check.step("bench (TensorRT rows, uint8 input)", check.edgexfer(
        "bench", "--run", str(run), "--backend", "onnxruntime,tensorrt", "--precision", "fp32,fp16,int8",
        "--batch", f"1,{TIMED_BATCH}", "--out", str(WORK / "bench"), "--machine-name", slug(name)), timeout=400)
    bench_rows(bench, WORK / "bench" / f"{slug(name)}.json")
    check.step("polygraphy run --trt --onnxrt (INT8 ONNX)", [
        str(Path(check.python).parent / "polygraphy"), "run", str(run / "export" / "model_int8_tensorrt.onnx"),
        "--trt", "--int8", "--onnxrt", "--input-shapes", f"input:[{TIMED_BATCH},3,32,32]",
        "--check-error-stat", "median", "--atol", "0.05", "--rtol", "0.05"], needs="export")
    check.step("pytest tests/gpu", [check.python, "-m", "pytest", "-q", "-rs", "tests/gpu"], timeout=300)
    return report(check, setup, name, Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out)


def report(check: Check, setup: Dict[str, Any], name: str, out: Path) -> int:
    """The closing table, results files, and the exit code (0: every step that ran passed)."""
    failed = [r for r in check.rows if r["status"] == "fail"]
    ran = [r for r in check.rows if r["status"] != "skip"]
    lines = [f"# gpu-check on {name}", "", f"install: {setup['install']} ({setup['install_seconds']} s); "
             f"{len(ran)} steps ran, {len(failed)} failed", "", "| step | status | s | detail |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['status']} | {r['seconds']} | {str(r.get('detail', '')).replace('|', '/')} |"
              for r in check.rows]
    if not check.dry_run:
        print("\n".join(lines[2:]))
    verdict = "PASS" if ran and not failed else ("NOTHING RAN" if not ran else "FAIL")
    print(f"gpu-check: {verdict}")
    if check.dry_run:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    base = out / slug(name)
    rows = [{k: v for k, v in r.items() if k != "output"} for r in check.rows]
    payload = {"gpu": name, "verdict": verdict, "setup": setup, "steps": rows, "facts": check.facts}
    base.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    base.with_suffix(".md").write_text("\n".join(lines + ["", f"verdict: {verdict}"]) + "\n")
    print(f"results: {base.with_suffix('.md')}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
