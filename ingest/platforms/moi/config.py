"""Settings of the MOI target: what ``--target moi`` and a ``[target]`` table of type ``moi`` take.

Apart from the target, so that reading settings (the CLI, the embedded destination, ``import ingest``)
imports no HTTP client: a run that sends nothing never needs one (benchmarks/README.md, Issue 11).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from ingest.platforms.base import TargetConfigBase

__all__ = ["MoiTargetConfig"]


class MoiTargetConfig(TargetConfigBase):
    """MatrixOne Intelligence: upload into a volume through ``/connectors/upload``."""

    type: Literal["moi"] = "moi"
    api_key: SecretStr
    volume_id: str = Field(min_length=1)
    #: Which table of ``/task/files`` status codes the platform speaks: the seed document's
    #: (4 failed, 5 success) or MOI 5.0's (3 failed, 4 success).
    file_status_table: Literal["seed", "v5"] = "seed"
    #: ``moi-key`` (the seed) or ``x-api-key`` (MOI 5.0, with ``workspace_id``).
    auth_header: Literal["moi-key", "x-api-key"] = "moi-key"
    workspace_id: str | None = None
