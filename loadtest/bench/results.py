"""What a benchmark run measured, as types: one frozen dataclass per section's output and BenchResults around
them. run.py builds them, report.py renders them, and results.json is their saved form (to_json/from_json),
so that `--report-only` and the tests read back exactly the types that were written.

The saved form is the dataclasses' fields, nested as they are, paths relative to the repository root. NaN and
infinities are written as JSON's NaN/Infinity extension (what Python's json module reads back), because a
figure that could not be measured (no successful request, a zero divisor) is NaN, not absent.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from loadtest.bench.config import Config
from loadtest.bench.engines import Shape
from loadtest.paths import ROOT, relative
from service.settings import Settings

T = TypeVar("T")


# --- a. engine
@dataclass(frozen=True)
class EngineRow:
    """One engine on one batch of B sentences at one beam: the best and the median of its timed runs."""

    batch: int
    beam: int
    engine: str
    sentences: int
    seconds: float  # the best run
    seconds_runs: tuple[float, ...]
    output_tokens: int
    output_tokens_runs: tuple[int, ...]
    tokens_per_s: float  # the best run
    median_tokens_per_s: float
    warmup_shape: Shape  # the untimed run, which must equal `shape`
    shape: Shape
    repeats: int
    # tokens/s over the reference engine's at the same batch and beam; None on the reference row itself.
    ratio: float | None
    median_ratio: float | None


@dataclass(frozen=True)
class EngineSection:
    tokens: int  # N output tokens per sentence
    ct2_threads: tuple[int, int]  # workers, threads per worker
    hf_dtype: str
    reference: str  # the engine the ratios are taken against
    batches: tuple[int, ...]
    repeats: int
    statistic: str
    torch_threads: int | None  # None on cuda
    rows: tuple[EngineRow, ...]

    def row(self, batch: int, beam: int, engine: str) -> EngineRow:
        return next(r for r in self.rows if (r.batch, r.beam, r.engine) == (batch, beam, engine))


# --- one closed-loop load (sections b, c, e, h)
@dataclass(frozen=True)
class LoadRow:
    clients: int
    requests: int  # sentences in the load
    sent: int  # fewer than requests when the time limit stopped the clients
    failures: int
    statuses: dict[str, int]  # HTTP status -> responses
    seconds: float
    output_tokens: float  # the service's translation_output_tokens_total over the load
    tokens_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    queue_p50_ms: float  # the service's x-queue-time
    inference_p50_ms: float  # the service's x-inference-time
    client_processes: int
    clients_per_process: tuple[int, ...]
    # Answers compared with the known translations (toy text only); None: not checked.
    checked: int | None = None
    exact: int | None = None


# --- d. a lone short request
@dataclass(frozen=True)
class Lone:
    samples: int
    failures: int
    offline_p50_ms: float
    offline_p99_ms: float
    service_p50_ms: float
    service_p99_ms: float
    overhead_median_ms: float  # median of the per-sentence differences service - offline
    overhead_p99_ms: float
    overhead_se_ms: float  # standard error of that median
    outside_engine_median_ms: float  # client latency - x-inference-time
    server_non_engine_median_ms: float  # x-total-time - x-inference-time
    http_client_median_ms: float  # client latency - x-total-time
    engine_call_vs_offline_median_ms: float  # x-inference-time - offline
    queue_median_ms: float


# --- e. concurrency
@dataclass(frozen=True)
class Concurrency:
    rows: tuple[LoadRow, ...]
    client_processes: int


# --- b. efficiency
@dataclass(frozen=True)
class OfflineRow:
    """One offline translate_batch configuration on the service's sentences: the best of `runs`."""

    inter_threads: int
    intra_threads: int
    max_batch_size: int
    inputs: int  # engine inputs (sentences, cut into chunks as the service cuts them)
    seconds: float
    output_tokens: int
    tokens_per_s: float
    runs: int
    tokens_per_s_runs: tuple[float, ...]


@dataclass(frozen=True)
class Efficiency:
    clients: int
    sentences: int
    service_tokens_per_s: float
    service_output_tokens: float
    offline: tuple[OfflineRow, ...]
    best_offline_tokens_per_s: float
    client_processes: int
    ratio: float  # service tokens/s / best offline tokens/s


# --- c. batching
@dataclass(frozen=True)
class Batching:
    on: LoadRow
    off: LoadRow
    gain: float  # on / off tokens/s


# --- h. baseline
@dataclass(frozen=True)
class BaselineRow:
    clients: int
    service: LoadRow
    baseline: LoadRow
    tokens_per_s_ratio: float  # service / baseline
    p50_ratio: float  # baseline / service: > 1 when the baseline is slower
    p99_ratio: float


@dataclass(frozen=True)
class Baseline:
    rows: tuple[BaselineRow, ...]
    command: str  # how the baseline service was started
    beam_size: int
    fixed_length: bool  # every translation forced to exactly N tokens
    dtype: str


# --- g. settings
@dataclass(frozen=True)
class SettingsRow:
    """One setting under the same load: medians over `rounds` fresh services, statuses summed."""

    label: str
    env: dict[str, str]  # the MT_* overrides
    clients: int
    requests: int
    rounds: int
    statuses: dict[str, int]
    tokens_per_s: float
    tokens_per_s_runs: tuple[float, ...]  # one per round
    p50_ms: float
    p99_ms: float
    peak_rss_mib: float  # the highest of the rounds
    cold_start_s: float
    lone_ms: float


# --- f. footprint
@dataclass(frozen=True)
class ServerFootprint:
    """One server process: its cold start (process start -> first /readyz 200) and its memory after its load."""

    name: str
    cold_start_s: float | None = None
    memory_kib: dict[str, int] = field(default_factory=dict)  # Vm* from /proc/PID/status

    @property
    def peak_rss_mib(self) -> float:
        return self.memory_kib.get("VmHWM", 0) / 1024

    @property
    def rss_mib(self) -> float:
        return self.memory_kib.get("VmRSS", 0) / 1024


# --- the machine
@dataclass(frozen=True)
class Machine:
    """machine.describe(): where the figures were measured."""

    device: str
    cpu: str
    cores: int
    usable_cores: int
    int8_flags: tuple[str, ...]
    memory_gib: float
    gpu: str
    os: str
    python: str
    versions: dict[str, str]
    commit: str
    load_average_at_start: str

    @classmethod
    def from_dict(cls, info: dict[str, Any]) -> Machine:
        """From machine.describe(); a key it gains and this type lacks is an error, so the two stay in step."""
        return _decode_dataclass(cls, info)


# --- the whole run
@dataclass(frozen=True)
class BenchResults:
    """A run, whole or in part: a section that did not run (or has not run yet) is None."""

    config: Config
    machine: Machine
    started_at: str
    service_settings: Settings  # the service's settings for the device, as every offline run copies them
    load: dict[str, str] = field(default_factory=dict)  # load average when each section started, and at the end
    engine: EngineSection | None = None
    lone: Lone | None = None
    concurrency: Concurrency | None = None
    efficiency: Efficiency | None = None
    batching: Batching | None = None
    baseline: Baseline | None = None
    settings: tuple[SettingsRow, ...] | None = None
    footprint: tuple[ServerFootprint, ...] = ()  # in the order the servers started
    elapsed_s: float | None = None

    def server(self, name: str) -> ServerFootprint | None:
        return next((s for s in self.footprint if s.name == name), None)

    def with_server(self, name: str, *, cold_start_s: float | None = None, memory_kib: dict[str, int] | None = None) -> BenchResults:
        """A copy with `name`'s cold start or memory recorded (a new server goes last)."""
        old = self.server(name)
        new = ServerFootprint(
            name,
            cold_start_s=old.cold_start_s if old and cold_start_s is None else cold_start_s,
            memory_kib=old.memory_kib if old and memory_kib is None else memory_kib or {},
        )
        if old is None:
            return dataclasses.replace(self, footprint=(*self.footprint, new))
        return dataclasses.replace(self, footprint=tuple(new if s.name == name else s for s in self.footprint))

    def to_json(self) -> str:
        return json.dumps(_encode(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BenchResults:
        data = json.loads(text)
        # Written before footprint was a type: two maps keyed by server name.
        if "footprint" not in data and ("cold_start_s" in data or "memory_kib" in data):
            cold, memory = data.pop("cold_start_s", {}), data.pop("memory_kib", {})
            data["footprint"] = [{"name": name, "cold_start_s": cold.get(name), "memory_kib": memory.get(name, {})}
                                 for name in dict.fromkeys([*cold, *memory])]
        return _decode(cls, data)


# --- the saved form
# The service's own settings come and go with the service; a file written by another version still reads, and
# host/port are not recorded: every benchmarked service listens on 127.0.0.1 at a port of its own.
_FOREIGN = (Settings,)
_NOT_SAVED: dict[type, tuple[str, ...]] = {Settings: ("host", "port")}


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        skip = _NOT_SAVED.get(type(value), ())
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name not in skip}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, Path):
        return relative(value)
    return value


def _decode(kind: Any, value: Any) -> Any:
    """`value` (parsed JSON) as the type `kind`, recursively."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any or kind is object:
        return value
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _decode(inner, value)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _decode_dataclass(kind, value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in value)
        return tuple(_decode(a, v) for a, v in zip(args, value, strict=True))
    if origin is list:
        return [_decode(args[0], v) for v in value]
    if origin is dict:
        return {k: _decode(args[1], v) for k, v in value.items()}
    if kind is tuple:
        return tuple(value)
    if kind is Path:
        path = Path(value)
        return path if path.is_absolute() else ROOT / path
    return value


def _decode_dataclass(cls: type[T], data: dict[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = set(data) - set(names)
    if unknown and cls not in _FOREIGN:
        raise ValueError(f"{cls.__name__}: unknown fields {', '.join(sorted(unknown))}")
    return cls(**{name: _decode(hints[name], data[name]) for name in names if name in data})
