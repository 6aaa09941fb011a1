"""README's first run on a machine without the IMDB data: make_sample.py downloads the
archive from a local HTTP server (127.0.0.1) that serves a small archive of the same
layout, checks its SHA-256, resumes an interrupted download, and says one clear line when
it cannot."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _archive(n_per_class: int = 2500) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for label, rating in (("pos", 8), ("neg", 2)):
            for i in range(n_per_class):
                data = f"review {i} of the {label} kind, {'great' if rating > 5 else 'awful'}"
                info = tarfile.TarInfo(f"aclImdb/train/{label}/{i}_{rating}.txt")
                info.size = len(data.encode())
                tar.addfile(info, io.BytesIO(data.encode()))
        info = tarfile.TarInfo("aclImdb/test/pos/0_9.txt")  # never read
        info.size = 4
        tar.addfile(info, io.BytesIO(b"skip"))
    return buf.getvalue()


class _Server:
    """Serves ``payload`` with Range support; ``cut`` bytes then a dropped connection on the
    first request when set; records the Range headers it saw."""

    def __init__(self, payload: bytes, cut: int | None = None):
        self.payload, self.cut, self.ranges = payload, cut, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                start = 0
                header = self.headers.get("Range")
                outer.ranges.append(header)
                if header:
                    start = int(header.split("=")[1].split("-")[0])
                body = outer.payload[start:]
                self.send_response(206 if header else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut is not None:
                    cut, outer.cut = outer.cut, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the network goes away half-way
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/aclImdb_v1.tar.gz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def clone(tmp_path) -> Path:
    """The sample_data folder alone, as in a clone with no ../shared beside it."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "sample_data", root / "sample_data")
    return root


def _make(clone: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "RNNPIPE_DATA_DIR"}
    return subprocess.run(
        [sys.executable, str(clone / "sample_data" / "make_sample.py")],
        env={**base, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _one_line(proc, *needles):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_first_run_downloads_checks_and_builds_the_sample(clone, tmp_path):
    payload = _archive()
    server = _Server(payload)
    try:
        env = {"RNNPIPE_CACHE_DIR": str(tmp_path / "cache"), "RNNPIPE_IMDB_URL": server.url,
               "RNNPIPE_IMDB_SHA256": hashlib.sha256(payload).hexdigest()}  # fmt: skip
        proc = _make(clone, env)
        assert proc.returncode == 0, proc.stderr
        sample = pl.read_parquet(clone / "sample_data" / "reviews.parquet")
        assert sample.height == 3000 and sorted(sample["label"].unique()) == [
            "negative", "positive",
        ]  # fmt: skip
        assert len(list((clone / "sample_data" / "incoming").glob("*.parquet"))) == 3
        assert (tmp_path / "cache" / "aclImdb_v1.tar.gz").is_file()
        assert server.ranges == [None]
        proc = _make(clone, env)  # the cached archive: no second download
        assert proc.returncode == 0 and server.ranges == [None]
    finally:
        server.close()


def test_checksum_mismatch_is_one_line_and_leaves_nothing(clone, tmp_path):
    server = _Server(_archive(10))
    try:
        env = {"RNNPIPE_CACHE_DIR": str(tmp_path / "cache"), "RNNPIPE_IMDB_URL": server.url,
               "RNNPIPE_IMDB_SHA256": "0" * 64}  # fmt: skip
        _one_line(_make(clone, env), "SHA-256", "expected 000")
        assert list((tmp_path / "cache").iterdir()) == []
    finally:
        server.close()


def test_interrupted_download_resumes(clone, tmp_path):
    payload = _archive()
    server = _Server(payload, cut=len(payload) // 3)
    try:
        env = {"RNNPIPE_CACHE_DIR": str(tmp_path / "cache"), "RNNPIPE_IMDB_URL": server.url,
               "RNNPIPE_IMDB_SHA256": hashlib.sha256(payload).hexdigest()}  # fmt: skip
        _one_line(_make(clone, env), "run again to resume")
        part = tmp_path / "cache" / "aclImdb_v1.tar.gz.part"
        assert part.stat().st_size == len(payload) // 3
        proc = _make(clone, env)
        assert proc.returncode == 0, proc.stderr
        assert server.ranges == [None, f"bytes={len(payload) // 3}-"]
        assert (clone / "sample_data" / "reviews.parquet").is_file() and not part.exists()
    finally:
        server.close()


def test_no_network_is_one_line(clone, tmp_path):
    server = _Server(b"")
    url = server.url
    server.close()  # nothing listens there any more
    env = {"RNNPIPE_CACHE_DIR": str(tmp_path / "cache"), "RNNPIPE_IMDB_URL": url}
    _one_line(_make(clone, env), "could not download", "--from aclImdb")
