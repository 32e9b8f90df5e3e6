"""scripts/health_check.py (make health-check) against real services on the toy model.

The public URL serves only the Ingress' routes (k8s/base/ingress.yaml), so the check runs here through
a small proxy that routes exactly those paths, as the nginx Ingress does, and answers 503 with an HTML
page when no backend is ready. The services behind it are real: a ready one, one with API keys on, one
whose model has not finished loading (503 not_ready), and a dead one.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tests.helpers import ROOT, build_app, free_port

SCRIPT = ROOT / "scripts" / "health_check.py"
INGRESS = ROOT / "k8s" / "base" / "ingress.yaml"
KEY_ENV = "TRANSLATION_API_KEY"
NGINX_503 = b"<html><head><title>503 Service Temporarily Unavailable</title></head><body>nginx</body></html>"
FORWARDED_HEADERS = ("authorization", "content-type", "accept", "x-request-id")
RETURNED_HEADERS = ("content-type", "retry-after", "www-authenticate", "location")


def ingress_paths() -> tuple[set[str], set[str]]:
    """The Ingress's (Exact paths, Prefix paths)."""
    ingress = yaml.safe_load(INGRESS.read_text())
    exact, prefixes = set(), set()
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["pathType"] in ("Exact", "Prefix"), "the proxy below emulates Exact and Prefix paths only"
            (exact if path["pathType"] == "Exact" else prefixes).add(path["path"])
    return exact, prefixes


def routed(path: str, exact: set[str], prefixes: set[str]) -> bool:
    """The Ingress API's matching: Exact is the whole path; Prefix `/a/` matches `/a` and `/a/...` element-wise."""
    return path in exact or any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in prefixes)


class IngressProxy:
    """Routes like the Ingress: its paths go to `backend`, any other path gets 404; with no backend
    (no ready pod behind the Ingress), routed paths get nginx's HTML 503. Records what it was asked."""

    def __init__(self, backend: str | None) -> None:
        self.backend = urllib.parse.urlsplit(backend) if backend else None
        self.exact, self.prefixes = ingress_paths()
        self.seen: list[tuple[str, str, int]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.forward(self)

            do_POST = do_GET

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("content-length") or 0))
        path = urllib.parse.urlsplit(handler.path).path
        if not routed(path, self.exact, self.prefixes):
            status, headers, answer = 404, {"content-type": "text/html"}, b"<html>404 Not Found</html>"
        elif self.backend is None:
            status, headers, answer = 503, {"content-type": "text/html"}, NGINX_503
        else:
            connection = http.client.HTTPConnection(self.backend.hostname, self.backend.port, timeout=30)
            forwarded = {name: handler.headers[name] for name in FORWARDED_HEADERS if handler.headers[name]}
            connection.request(handler.command, handler.path, body=body or None, headers=forwarded)
            response = connection.getresponse()
            status, answer = response.status, response.read()
            headers = {name: response.headers[name] for name in RETURNED_HEADERS if response.headers[name]}
            connection.close()
        self.seen.append((handler.command, path, status))
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("content-length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def ingress() -> Iterator:
    """ingress(backend_url or None) -> a running IngressProxy, closed after the test."""
    proxies: list[IngressProxy] = []

    def make(backend: str | None) -> IngressProxy:
        proxies.append(IngressProxy(backend))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def check(*args: str, key: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name != KEY_ENV}
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False, timeout=timeout, env=env,
    )


def test_the_check_uses_only_routes_the_ingress_serves():
    source = SCRIPT.read_text()
    assert "/readyz" not in source and "/healthz" not in source
    assert {"/translation", "/languages"} <= ingress_paths()[0]  # Exact: the internal paths stay unrouted


@pytest.mark.slow
def test_passes_through_the_ingress_on_a_real_service(toy_model_dir, start_service, ingress):
    service = start_service(toy_model_dir)
    proxy = ingress(service.url)
    ok = check(proxy.url + "/", "--from", "en", "--to", "fr", "--text", "alpha bravo charlie.")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "'alpha bravo charlie.' -> 'charlie bravo alpha.'" in ok.stdout
    assert "/languages: " in ok.stdout and "en and fr among them" in ok.stdout
    assert proxy.seen == [("POST", "/translation", 200), ("GET", "/languages", 200)]
    # The same check passes straight against the service (make serve, make dev).
    direct = check(service.url, "--from", "en", "--to", "de", "--text", "alpha bravo charlie.")
    assert direct.returncode == 0, direct.stdout + direct.stderr
    assert "-> 'bravo charlie alpha.'" in direct.stdout


@pytest.mark.slow
def test_final_answers_fail_at_once(toy_model_dir, start_service, ingress):
    service = start_service(toy_model_dir)
    proxy = ingress(service.url)
    started = time.monotonic()
    unknown = check(proxy.url, "--to", "xx", "--wait", "60")
    assert unknown.returncode == 1 and "FAIL" in unknown.stderr and "422" in unknown.stderr, unknown.stderr
    wrong_path = check(proxy.url + "/api", "--wait", "60")
    assert wrong_path.returncode == 1 and "404" in wrong_path.stderr and "base URL" in wrong_path.stderr
    # Neither waited for the 60 s: a 422 or a 404 is no "not yet".
    assert time.monotonic() - started < 30, f"took {time.monotonic() - started:.1f}s"
    assert "wait" not in unknown.stdout + wrong_path.stdout


@pytest.mark.slow
def test_sends_the_api_key_from_the_environment(toy_model_dir, start_service, ingress, tmp_path):
    keys = tmp_path / "api-keys"
    keys.write_text("s3cret-health-key\n")
    service = start_service(toy_model_dir, env={"MT_API_KEYS_FILE": str(keys)})
    proxy = ingress(service.url)

    missing = check(proxy.url, "--wait", "30")
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "401" in missing.stderr and f"set {KEY_ENV}" in missing.stderr
    wrong = check(proxy.url, "--wait", "30", key="not-the-key")
    assert wrong.returncode == 1 and f"the key in {KEY_ENV} was refused" in wrong.stderr, wrong.stderr

    ok = check(proxy.url, "--text", "alpha bravo.", key="s3cret-health-key")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "-> 'bravo alpha.'" in ok.stdout and "languages" in ok.stdout
    assert "s3cret-health-key" not in ok.stdout + ok.stderr
    # Another variable name, for a pipeline that keeps several keys.
    env_name = subprocess.run(
        [sys.executable, str(SCRIPT), proxy.url, "--api-key-env", "PROD_TRANSLATION_KEY"],
        capture_output=True, text=True, check=False, timeout=90,
        env={**{n: v for n, v in os.environ.items() if n != KEY_ENV}, "PROD_TRANSLATION_KEY": "s3cret-health-key"},
    )
    assert env_name.returncode == 0, env_name.stdout + env_name.stderr


@pytest.fixture
def loading_service(toy_model_dir) -> Iterator[tuple[str, threading.Event]]:
    """The real app on a loopback port whose model load blocks until the returned event is set:
    until then, POST /translation answers 503 not_ready."""
    import uvicorn

    loaded = threading.Event()

    def hold(engine):
        loaded.wait(60)  # bounded: the fixture sets it on the way out in any case
        return engine

    app = build_app(toy_model_dir, wrap_engine=hold)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "test server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", loaded
    finally:
        loaded.set()
        server.should_exit = True
        thread.join(30)


@pytest.mark.slow
def test_waits_while_the_model_loads(loading_service, ingress):
    url, loaded = loading_service
    proxy = ingress(url)

    not_ready = check(proxy.url, "--wait", "2")
    assert not_ready.returncode == 1, not_ready.stdout + not_ready.stderr
    assert "not ready after 2s" in not_ready.stderr and "503 not_ready" in not_ready.stderr

    env = {name: value for name, value in os.environ.items() if name != KEY_ENV}
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), proxy.url, "--wait", "60", "--text", "alpha bravo charlie."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        # The check says it is waiting on the 503 before the model is let go; the loop ends with the
        # check's own --wait at the latest (readline returns "" when it exits).
        first = process.stdout.readline()
        assert first.startswith("wait 503 not_ready"), first
        loaded.set()
        out, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, first + out + err
    assert "-> 'charlie bravo alpha.'" in out
    statuses = [status for method, path, status in proxy.seen if path == "/translation"]
    assert statuses[0] == 503 and statuses[-1] == 200, statuses


@pytest.mark.slow
def test_fails_on_a_dead_service_and_an_ingress_without_pods(toy_model_dir, start_service, ingress):
    service = start_service(toy_model_dir)
    service.stop()
    dead = check(service.url, "--wait", "1")
    assert dead.returncode == 1, dead.stdout + dead.stderr
    assert "not ready after 1s" in dead.stderr and "Connection refused" in dead.stderr

    no_pods = ingress(None)
    empty = check(no_pods.url, "--wait", "1")
    assert empty.returncode == 1, empty.stdout + empty.stderr
    assert "not ready after 1s" in empty.stderr and "503 (not JSON" in empty.stderr
    assert empty.stdout.startswith("wait 503 (not JSON: '<html><head><title>503 Service Temporarily Unavailable")


def test_the_emulated_ingress_matches_prefixes_by_path_element():
    exact, prefixes = {"/translation"}, {"/static/", "/libretranslate/"}
    assert routed("/translation", exact, prefixes) and not routed("/translation/x", exact, prefixes)
    assert routed("/static/app.js", exact, prefixes) and routed("/libretranslate//translate", exact, prefixes)
    assert not routed("/staticfile", exact, prefixes) and not routed("/metrics", exact, prefixes)
