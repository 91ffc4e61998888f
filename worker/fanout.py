"""`n` samples from a provider without `n`: n single calls side by side, merged into one Completion."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from cascade.errors import ProviderError
from cascade.models import Completion, CompletionRequest, Usage


def fan_out(call: Callable[[CompletionRequest], Completion], request: CompletionRequest) -> Completion:
    """Make `request.n` single calls at once. When one fails for good, its error is raised once every call has
    ended, carrying in `spent` the usage of the calls that did answer (they are billed all the same)."""
    single = replace(request, n=1)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=request.n, thread_name_prefix="fan-out") as pool:
        futures = [pool.submit(call, single) for _ in range(request.n)]
    answers, failures = [], []
    for future in futures:
        error = future.exception()
        (failures if error is not None else answers).append(error if error is not None else future.result())
    if failures:
        first = failures[0]
        if isinstance(first, ProviderError):
            first.spent = sum((a.usage for a in answers), Usage())
        raise first
    first = answers[0]
    return Completion(
        text=first.text,
        usage=sum((a.usage for a in answers), Usage()),
        finish_reason=first.finish_reason,
        model=first.model,
        latency_ms=(time.perf_counter() - start) * 1000,
        samples=tuple(a.text for a in answers),
        sample_finish=tuple(a.finish_reason for a in answers),
        rate_limit=tightest([a.rate_limit for a in answers]),
    )


def tightest(hints: list[dict[str, float]]) -> dict[str, float]:
    """Merge the rate-limit hints of parallel calls, keeping the most cautious value of each."""
    merged: dict[str, float] = {}
    for hint in hints:
        for key, value in hint.items():
            if key not in merged:
                merged[key] = value
            elif key.startswith("remaining_"):
                merged[key] = min(merged[key], value)
            else:  # resets: the later one
                merged[key] = max(merged[key], value)
    return merged
