"""Fill a pipeline's templates with a job's fields."""

from __future__ import annotations

from typing import Any

import orjson

from cascade.worker.config.schema import Prompt


def render(prompt: Prompt, fields: dict[str, Any]) -> tuple[str, str]:
    """The (system, user) texts for one job; fields are validated to exist by the producer.

    A field that is not a string renders as JSON (`{"a": true, "b": null}`, `[1, 2]`, `3`), the form a
    model reads best, never as Python's repr.
    """
    values = {k: v if isinstance(v, str) else orjson.dumps(v, default=str).decode() for k, v in fields.items()}
    return prompt.system.format_map(values), prompt.user.format_map(values)
