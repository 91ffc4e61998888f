"""Test helpers: a config directory to tweak, scripted providers (below the SDK line), message builders."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson
from click.testing import CliRunner

from cascade.errors import ProviderError
from cascade.models import Completion, CompletionRequest, TokenLogprob, Usage

REPO = Path(__file__).resolve().parent.parent
#: five valid ticket rows for the example pipeline
TICKETS = [{"id": f"r{i}", "subject": "Refund", "body": f"I was charged twice, order {i}"} for i in range(1, 6)]


def lines(*rows) -> bytes:
    """JSONL of these rows (a bytes row is taken as the line as it stands)."""
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows)


def invoke(command, args, env):
    """A click command run in this process, as a user would run it, exceptions not caught."""
    return CliRunner().invoke(command, args, env=env, catch_exceptions=False)


def copy_recorded_config(target: Path) -> Path:
    """A copy of examples/recorded/config at `target`, without a ledger a local run may have left beside it."""
    shutil.copytree(REPO / "examples" / "recorded" / "config", target,
                    ignore=shutil.ignore_patterns("cascade-ledger.db*"))
    return target


def copy_config(tmp_path: Path, edit: Callable[[str], str] | None = None, pipelines: Iterable[str] = ()) -> Path:
    """Copy config/ into tmp_path; `edit` rewrites cascade.toml's text; returns the cascade.toml path."""
    target = tmp_path / "config"
    shutil.copytree(REPO / "config", target, ignore=shutil.ignore_patterns("cascade-ledger.db*", "__pycache__"))
    for extra in pipelines:
        shutil.copy(REPO / "tests" / "data" / extra, target / "pipelines" / extra)
    path = target / "cascade.toml"
    if edit is not None:
        path.write_text(edit(path.read_text()))
    return path


class ScriptedProvider:
    """A provider whose answers come from a function of the request: for engine unit tests only."""

    supports_logprobs = True
    supports_n = True

    def __init__(self, answer: Callable[[CompletionRequest, int], str | Completion | ProviderError]):
        self.answer = answer
        self.calls: list[CompletionRequest] = []
        self._lock = threading.Lock()

    def complete(self, request: CompletionRequest) -> Completion:
        with self._lock:
            self.calls.append(request)
            n = len(self.calls)
        out = self.answer(request, n)
        if isinstance(out, ProviderError):
            raise out
        if isinstance(out, Completion):
            return out
        return Completion(text=out, usage=Usage(100, 10, 0), finish_reason="stop", model=request.model,
                          latency_ms=12.0, logprobs=(TokenLogprob(out[:3], -0.01),))


class SamplingProvider:
    """A provider without `n` (as Anthropic): each sample is its own call; `answer(i)` gives call i's answer."""

    supports_logprobs = False
    supports_n = False

    def __init__(self, answer: Callable[[int], str | ProviderError]):
        self.answer = answer
        self.calls = 0
        self._lock = threading.Lock()

    def complete(self, request: CompletionRequest) -> Completion:
        with self._lock:
            self.calls += 1
            i = self.calls
        out = self.answer(i)
        if isinstance(out, ProviderError):
            raise out
        return Completion(text=out, usage=Usage(100, 10, 0), finish_reason="stop", model=request.model, latency_ms=5.0)


class NullDispatcher:
    """Takes escalations and forgets them (for tests of one tier)."""

    def __init__(self):
        self.sent: list = []

    def send(self, ref, first: bool = False) -> None:
        self.sent.append(ref)

    def backlog(self, tier_name: str) -> int:
        return 0


def one_job(settings, providers, job, *, batch: str = "b", pipeline: str = "ticket-triage", limiter=None,
            dispatcher=None, client=None, sleep=None, namespace: str = "t"):
    """An engine over fakeredis (or `client`) with `job` registered in `batch`: (engine, batch store, its JobRef)."""
    import fakeredis

    from cascade.worker.engine import Engine
    from cascade.worker.messages import JobPayload, JobRef
    from cascade.worker.runtime import ProviderPool
    from cascade.worker.store import BatchStore, JobStore, Registration

    client = client or fakeredis.FakeRedis()
    store = BatchStore(client, namespace)
    engine = Engine(settings, JobStore(client, namespace), ProviderPool(settings, providers), dispatcher or NullDispatcher(),
                    limiter, sleep=sleep or (lambda seconds: None))
    store.open_batch(batch, pipeline)
    first = settings.pipeline(pipeline).ladder[0]
    [seq] = store.register_jobs(batch, 1, first, [Registration(job.id, job.line, 0, JobPayload(job).to_json())])
    store.mark_submitted(batch, 0)
    return engine, store, JobRef(batch, pipeline, job.id, 0, seq)
