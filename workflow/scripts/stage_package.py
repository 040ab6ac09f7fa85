"""Imported first by every script: puts the workflow's own stage package (workflow/proxyattention)
at the front of sys.path, so a job runs the code of this checkout whether or not the package is
installed in the job's Python (``--sdm conda`` environments install only its dependencies)."""

import sys
from pathlib import Path

WORKFLOW = str(Path(__file__).resolve().parents[1])
if WORKFLOW not in sys.path[:1]:
    sys.path.insert(0, WORKFLOW)
