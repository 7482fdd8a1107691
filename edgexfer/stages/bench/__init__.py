"""The bench stage: a latency matrix of models x backends x precisions x batch sizes on this machine.

Every artifact is measured two ways on the same input pixels:

- **model alone**: ``runner.infer`` on a prepared batch (warm-up, then enough timed calls for stable
  percentiles; see :mod:`edgexfer.timing`);
- **end to end**: image files -> decode (PIL) -> resize/crop -> the runner's input format -> infer ->
  top-5, one call per batch.

Threads are pinned to ``threads`` (default: physical cores) in every runtime. Results go to
``<out_dir>/<machine>.json`` with a Markdown table and a PNG chart (see :mod:`edgexfer.report`).

The stage itself only reads a run directory (:mod:`.targets`), feeds (:mod:`.inputs`), times
(:mod:`.measure`) and writes (:mod:`.document`). Making random-weight models to time goes through the
export and build stages, so it is orchestrated a level up, in :mod:`edgexfer.bench_pipeline`, which is
what ``edgexfer bench`` and the pipeline call.
"""
