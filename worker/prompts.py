"""Fill a pipeline's templates with a job's fields."""

from __future__ import annotations

from typing import Any

from cascade.worker.config.schema import Prompt


def render(prompt: Prompt, fields: dict[str, Any]) -> tuple[str, str]:
    """The (system, user) texts for one job; fields are validated to exist by the producer."""
    values = {k: v if isinstance(v, str) else str(v) for k, v in fields.items()}
    return prompt.system.format_map(values), prompt.user.format_map(values)
