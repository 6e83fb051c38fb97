"""The MOI document's sample upload loop (seed ``000_7f7c5941f1239cc9.txt``, section 本地上传载入).

``upload_file`` and ``batch_upload_files`` are copied from the document with only two changes: the
URL's base comes from the command line instead of the hard-coded cloud host, and type hints were
added. Everything else is as documented: plain ``requests.post`` per file (no session, so one new
connection per file), basename as ``file_name``, ``meta`` with ``file_size`` and ``mime_type``, one
line printed per file.

Run by ``bench_moi.py`` in a child process so its wall time and peak RSS are measured like curl's
and ingest's::

    MOI_KEY=KEY python benchmarks/_seed_client.py BASE_URL VOLUME_ID FILE_LIST

``FILE_LIST`` holds one path per line. The last stdout line is a JSON summary ``{"ok": N, "failed": M}``.
"""

from __future__ import annotations

import json
import mimetypes
import os
import sys
from typing import Any

import requests

#: The document hard-codes https://freetier-01.cn-hangzhou.cluster.matrixonecloud.cn; we point at the emulator.
BASE_URL = "http://127.0.0.1:0"


def upload_file(file_path: str, volume_id: str, moi_key: str) -> Any:
    """
    上传单个文件到平台
    参数:
    file_path (str): 本地文件路径
    volume_id (str): 目标数据卷 ID
    moi_key (str): API 密钥
    """
    # 验证文件是否存在
    if not os.path.exists(file_path):
        raise FileNotFoundError(f"文件不存在:{file_path}")
    # 构建请求 URL
    url = BASE_URL + "/connectors/upload"
    # 构建请求头
    headers = {"Moi-Key": moi_key}
    # 获取文件信息
    file_name = os.path.basename(file_path)
    file_size = os.path.getsize(file_path)
    mime_type, _ = mimetypes.guess_type(file_path)
    # 准备元数据
    meta = json.dumps(
        [{"file_name": file_name, "file_size": file_size, "mime_type": mime_type or "application/octet-stream"}]
    )
    # 准备文件和表单数据
    with open(file_path, "rb") as f:
        files = {"file": (file_name, f, mime_type or "application/octet-stream")}
        data = {"VolumeID": volume_id, "meta": meta}
        # 发送 POST 请求
        response = requests.post(url, headers=headers, files=files, data=data)
    # 检查响应
    response.raise_for_status()
    return response.json()


def batch_upload_files(file_paths: list[str], volume_id: str, moi_key: str) -> list[dict[str, Any]]:
    """
    批量上传多个文件
    参数:
    file_paths (list): 文件路径列表
    volume_id (str): 目标数据卷 ID
    moi_key (str): API 密钥
    """
    results = []
    for file_path in file_paths:
        try:
            result = upload_file(file_path, volume_id, moi_key)
            results.append({"file_path": file_path, "success": True, "result": result})
            print(f"✅ 上传成功:{os.path.basename(file_path)}")
        except Exception as e:
            results.append({"file_path": file_path, "success": False, "error": str(e)})
            print(f"❌ 上传失败:{os.path.basename(file_path)} - {e}")
    return results


def main(argv: list[str]) -> int:
    global BASE_URL
    if len(argv) != 3:
        print("usage: MOI_KEY=KEY _seed_client.py BASE_URL VOLUME_ID FILE_LIST", file=sys.stderr)
        return 2
    BASE_URL = argv[0].rstrip("/")
    volume_id = argv[1]
    with open(argv[2], encoding="utf-8") as listing:
        file_paths = [line.rstrip("\n") for line in listing if line.strip()]
    results = batch_upload_files(file_paths, volume_id, os.environ["MOI_KEY"])
    ok = sum(1 for r in results if r["success"])
    print(json.dumps({"ok": ok, "failed": len(results) - ok}))
    return 0 if ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
