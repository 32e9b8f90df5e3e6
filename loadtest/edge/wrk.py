"""wrk, the load client for the edge benchmark: a C client cheap enough not to be what limits the server.

Every request is a single-record toy translation; the bodies cycle through `bodies` distinct texts so
that the batcher sees varied sentences. wrk retries at once after any answer, a 429 included: that is
the overload the benchmark is about.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = """
local bodies = %(bodies)s
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, "/translation", nil, bodies[i])
end
"""


class WrkMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class WrkResult:
    connections: int
    seconds: float
    requests: int
    non_2xx: int
    socket_errors: int
    latency_p50_ms: float
    latency_p99_ms: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def good_per_s(self) -> float:
        return (self.requests - self.non_2xx) / self.seconds


def write_script(path: Path, bodies: list[dict]) -> Path:
    lua_strings = ", ".join(_lua_string(json.dumps(body, ensure_ascii=False)) for body in bodies)
    path.write_text(_SCRIPT % {"bodies": "{" + lua_strings + "}"})
    return path


def run(url: str, script: Path, *, connections: int, seconds: float, timeout_s: float = 10.0) -> WrkResult:
    """One wrk run of `seconds` (whole seconds: wrk takes no fractions); wrk stops itself, and a margin
    bounds the wait for its start and report."""
    seconds = max(1, round(seconds))
    binary = shutil.which("wrk")
    if binary is None:
        raise WrkMissing("wrk is not installed: `apt-get install wrk` (make test installs it)")
    command = [binary, "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={round(timeout_s)}s", "--latency", "-s", str(script), url]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    return parse(output, connections)


def parse(output: str, connections: int) -> WrkResult:
    requests = re.search(r"(\d+) requests in ([\d.]+)(m?s|m)\b", output)
    if requests is None:
        raise ValueError(f"no request count in wrk's output:\n{output}")
    seconds = float(requests.group(2)) * {"s": 1.0, "ms": 0.001, "m": 60.0}[requests.group(3)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        connections=connections,
        seconds=seconds,
        requests=int(requests.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        latency_p50_ms=_latency(output, "50%"),
        latency_p99_ms=_latency(output, "99%"),
    )


def _latency(output: str, quantile: str) -> float:
    found = re.search(rf"^\s*{re.escape(quantile)}\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if found is None:
        return float("nan")
    return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
