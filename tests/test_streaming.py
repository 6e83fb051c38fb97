"""Streaming: a file of any size goes through in constant memory, on the client and the emulator.

Peak RSS is read from the kernel (``VmHWM`` of the client and of the emulator), each in
its own process, so nothing else the test suite does is counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import md5_of
from tests.harness import MOI, ServerProcess

MiB = 1024 * 1024
SIZE = 256 * MiB

CLIENT = """
import json, sys
from pathlib import Path
import anyio, ingest
from pydantic import SecretStr

config = ingest.RunConfig(
    source=ingest.SourceConfig(path=Path(sys.argv[1])),
    target=ingest.MoiTargetConfig(endpoint=sys.argv[2], api_key=SecretStr(sys.argv[3]), volume_id=sys.argv[4]),
    manifest=Path(sys.argv[5]),
    quiet=True,
)
# VmHWM, not ru_maxrss: ru_maxrss starts at the forking test process's peak (Linux carries it across
# exec), which would hide any growth below it.
def peak_kib():
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")))
before = peak_kib()
summary = anyio.run(ingest.run, config)
after = peak_kib()
print(json.dumps({"before_kib": before, "after_kib": after, "done": summary.done, "failed": summary.failed}))
"""


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_256_mib_file_uploads_in_constant_memory(tmp_path: Path) -> None:
    """A 256 MiB file: client peak RSS grows < 64 MiB, the emulator's too, and the bytes arrive intact."""
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    with open(big, "wb") as f:
        block = bytes(range(256)) * 4096  # 1 MiB of varied bytes
        for _ in range(SIZE // MiB):
            f.write(block)
    server = ServerProcess(MOI.serve_command(tmp_path / "data"))
    try:
        server_before = peak_rss_kib(server.proc.pid)
        result = subprocess.run(
            [sys.executable, "-c", CLIENT, str(src), server.url, MOI.api_key, MOI.volume_id, str(tmp_path / "m.db")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        server_growth_mib = (peak_rss_kib(server.proc.pid) - server_before) / 1024
    finally:
        server.stop()
    numbers = json.loads(result.stdout)
    assert (numbers["done"], numbers["failed"]) == (1, 0)
    client_growth_mib = (numbers["after_kib"] - numbers["before_kib"]) / 1024
    assert client_growth_mib < 64, f"client peak RSS grew by {client_growth_mib:.1f} MiB"
    assert server_growth_mib < 64, f"emulator peak RSS grew by {server_growth_mib:.1f} MiB"
    stored = tmp_path / "data" / MOI.volume_id / "big.bin"
    assert stored.stat().st_size == SIZE
    assert md5_of(stored) == md5_of(big)
