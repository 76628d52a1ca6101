"""nginx in front of vLLM replicas, hashing ``X-Session-ID`` consistently (docs/deployment.md).

For tests and benchmarks: the router a deployment would run, on 127.0.0.1 with its own prefix
folder, so a session's turns stay on the replica holding its prefix cache and move (once, paying
one full prefill) when that replica dies. The access log records which replica served each
request and for which session.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from voxtral_pipeline.testing.vllm_server import free_port

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format routed '$http_x_session_id|$upstream_addr|$status|$request_uri';
    access_log {root}/access.log routed;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    client_max_body_size 64m;
    client_body_buffer_size 16m;  # a prompt's audio stays in memory, not in temp files
    upstream vllm {{
        hash $http_x_session_id consistent;
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://vllm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)


class NginxRouter:
    """``nginx`` hashing ``X-Session-ID`` over ``upstreams`` (``host:port``)."""

    def __init__(self, upstreams: list[str]):
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (make system-deps installs it)")
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="voxtral-nginx-"))
        # nginx started as root runs its worker as nobody: the temp folders must be theirs too.
        os.chmod(self.root, 0o755)
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.root / name).mkdir()
            os.chmod(self.root / name, 0o777)
        self.port = free_port()
        servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=30s;" for u in upstreams)
        self.conf = self.root / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(root=self.root, servers=servers, port=self.port))
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 30.0) -> NginxRouter:
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.root), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "stderr.log", "wb"),
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.root / 'stderr.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2).close()
                return self
            except urllib.error.HTTPError:
                return self  # nginx answers (a replica may not yet)
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError("nginx did not start listening")

    def routes(self) -> list[tuple[str, str, str]]:
        """(session id, upstreams tried (``a, b`` when the first failed), status) per request."""
        path = self.root / "access.log"
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            session, upstream, status, _uri = line.split("|", 3)
            rows.append((session, upstream, status))
        return rows

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish the open requests
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> NginxRouter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
