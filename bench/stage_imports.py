"""Import time of each stage's module in a fresh process: the part of a cold job's start that the
warm server saves (no anchor of its own: warm_start.py measures the saving, cold against warm).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

# 5. whole workflow and import times ------------------------------------------------------------


STAGE_MODULES = ["proxyattention.stages.prepare", "proxyattention.stages.train", "proxyattention.stages.find_misclassified",
                 "proxyattention.stages.compute_cams", "proxyattention.stages.mask_and_save", "proxyattention.stages.evaluate",
                 "proxyattention.stages.decide_cycle", "proxyattention.stages.aggregate", "proxyattention.stages.figures"]


def bench_imports(repeats: int) -> list[dict]:
    rows = []
    for module in STAGE_MODULES:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
            times.append(time.perf_counter() - t0)
        rows.append({"module": module, "import_s": statistics.median(times)})
    return rows
