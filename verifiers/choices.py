"""The answer (or one field of a JSON answer) must be one of the allowed labels."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import Field

from cascade.models import Attempt, Job, Verdict
from cascade.verifiers.base import Options as BaseOptions
from cascade.verifiers.base import Verifier, VerifyContext
from cascade.verifiers.parsing import MISSING, clip, extract_json, lookup_field, normalize_label


class ChoicesVerifier(Verifier):
    """Checks the answer against a closed set of labels, after normalisation."""

    name = "choices"

    class Options(BaseOptions):
        """`labels` default to the pipeline's; `field` (dotted) picks the value out of a JSON answer."""

        labels: tuple[str, ...] | None = Field(default=None, min_length=1)
        field: str | None = Field(default=None, min_length=1)

    options: Options

    def check(self, job: Job, attempt: Attempt, ctx: VerifyContext) -> Verdict:
        """Pass when the answer normalises to one of the labels."""
        labels = self.options.labels or ctx.labels
        if not labels:
            # Pipeline labels are only known here, so a missing list is a per-check failure, not a build error.
            return self.verdict(False, "no labels configured")
        candidate: Any = attempt.text
        if self.options.field is not None:
            try:
                value = extract_json(attempt.text)
            except ValueError as e:
                return self.verdict(False, str(e))
            candidate = lookup_field(value, self.options.field)
            if candidate is MISSING:
                return self.verdict(False, f"missing field: {self.options.field}")
            if not isinstance(candidate, str):
                candidate = orjson.dumps(candidate).decode()
        if normalize_label(candidate, labels) is not None:
            return self.verdict(True)
        listed = clip(", ".join(labels), 80)
        return self.verdict(False, f"unknown label: {clip(candidate.strip(), 40)!r} not in [{listed}]")

