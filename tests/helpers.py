"""Test helpers: a config directory to tweak, scripted providers (below the SDK line), message builders."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from cascade.errors import ProviderError
from cascade.models import Completion, CompletionRequest, TokenLogprob, Usage

REPO = Path(__file__).resolve().parent.parent


def copy_config(tmp_path: Path, edit: Callable[[str], str] | None = None, pipelines: Iterable[str] = ()) -> Path:
    """Copy config/ into tmp_path; `edit` rewrites cascade.toml's text; returns the cascade.toml path."""
    target = tmp_path / "config"
    shutil.copytree(REPO / "config", target)
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
