"""The pipeline, one module per stage::

    source ──► planner ──► work stream (bounded) ──► workers ──► poller
                  │                                      │          │
                  └──────────────── manifest ◄───────────┴──────────┘

- ``planner``: reads the source, asks the manifest what each file needs, feeds the workers.
- ``workers``: record the intent, stream the bodies, hand the receipts to the poller.
- ``poller``: follows accepted files until done or failed, retries failures.
- ``state``: what one run shares between its stages; ``pipeline``: the task group that wires them.
- ``run``: one job end to end (destination, manifest, engine under signals, report, summary).
"""

from __future__ import annotations

from ingest.engine.pipeline import run_engine
from ingest.engine.run import Job, retry_failed, run, run_job

__all__ = ["Job", "retry_failed", "run", "run_engine", "run_job"]
