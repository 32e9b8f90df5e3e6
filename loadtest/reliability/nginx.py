"""nginx in front of the service, configured as ingress-nginx configures it: a pooled upstream keep-alive
(`keepalive 32` in an `upstream` block, HTTP/1.1 to the upstream with the Connection header cleared, so one
upstream connection carries many clients' requests one after another) and `X-Forwarded-For` appended.

It runs in the foreground as a child process (`daemon off`), from a prefix directory of its own (config,
error log, pid file, temp files), listening on a free 127.0.0.1 port; `stop` quits it gracefully.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from loadtest.harness import HOST, free_port, stop_process, wait_for


class NginxMissing(RuntimeError):
    """nginx is not installed."""


def nginx_config(prefix: Path, *, listen_port: int, upstream_port: int, keepalive: int = 32, workers: int = 1,
                 user: str | None = None) -> str:
    """The whole nginx.conf. What ingress-nginx sets that matters here, with its defaults where the issue names
    none: an upstream keep-alive pool, HTTP/1.1 upstream with `Connection ""`, `$proxy_add_x_forwarded_for`,
    request buffering on and response buffering off, 5 s connect and 60 s read/send timeouts, `proxy_next_upstream
    error timeout` (a POST already sent is never retried). One worker, so the pool is one pool of `keepalive`
    connections (ingress-nginx has one per worker). `user`: the workers' user, for a master started as root
    (else they run as `nobody`, who may not reach a prefix under a private temp directory)."""
    user_line = f"user {user};\n" if user else ""
    return f"""# written by loadtest/reliability/nginx.py: ingress-nginx's proxying, on loopback
{user_line}daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 16384;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 8192;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    keepalive_timeout 75s;
    keepalive_requests 1000;
    client_max_body_size 4m;
    client_body_buffer_size 16k;
    large_client_header_buffers 4 16k;

    upstream service {{
        server {HOST}:{upstream_port};
        keepalive {keepalive};
        keepalive_timeout 60s;
        keepalive_requests 10000;
    }}

    server {{
        listen {HOST}:{listen_port};

        location / {{
            proxy_pass http://service;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_connect_timeout 5s;
            proxy_send_timeout 60s;
            proxy_read_timeout 60s;
            proxy_buffering off;
            proxy_request_buffering on;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """nginx proxying 127.0.0.1:`upstream_port` from a free 127.0.0.1 port, its files under `prefix`."""

    prefix: Path
    upstream_port: int
    keepalive: int = 32
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def start(self, timeout: float = 15.0) -> Self:
        binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
        if binary is None:
            raise NginxMissing("nginx is not installed (scripts/install_system_deps.sh installs it)")
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        config = self.prefix / "nginx.conf"
        # Started as root, the workers would be `nobody`: keep them this process's user, who can reach the prefix.
        user = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
        config.write_text(nginx_config(self.prefix, listen_port=self.port, upstream_port=self.upstream_port,
                                       keepalive=self.keepalive, user=user))
        with open(self.prefix / "stderr.log", "wb") as output:
            # -e: the error log from the start, before the config is read (else the compiled-in /var/log path)
            self.process = subprocess.Popen([binary, "-p", str(self.prefix), "-e", str(self.error_log), "-c", str(config)],
                                            stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_for(self._listening, timeout=timeout, interval=0.05, what=f"nginx listening on {self.url}")
        except BaseException:
            self.stop()
            raise
        return self

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            text = (self.prefix / "stderr.log").read_text(errors="replace") + self.errors()
            raise RuntimeError(f"nginx exited with {self.process.returncode}: {text[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.5):
            return True
        return False

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def error_lines(self) -> dict[str, int]:
        """Lines of the error log by level (`error`, `warn`...; the log keeps warn and above)."""
        counts: dict[str, int] = {}
        for line in self.errors().splitlines():
            start = line.find("[")
            level = line[start + 1:line.find("]", start)] if start >= 0 else "other"
            counts[level] = counts.get(level, 0) + 1
        return counts

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGQUIT (finish what is in flight, then exit), SIGKILL after `timeout`."""
        return stop_process(self.process, signal.SIGQUIT, timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_until_proxied(url: str, timeout: float = 15.0) -> None:
    """Until GET {url}/healthz through the proxy answers 200 (the upstream is reachable)."""
    import http.client

    def answers() -> bool:
        connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=2)
        try:
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    wait_for(answers, timeout=timeout, interval=0.05, what=f"{url}/healthz through nginx")
