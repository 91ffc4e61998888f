"""Reject answers that refuse or hedge instead of answering."""

from __future__ import annotations

import re
from pathlib import Path

from cascade.models import Attempt, Job, Verdict
from cascade.verifiers.base import Options as BaseOptions
from cascade.verifiers.base import Verifier, VerifyContext

DEFAULT_PHRASES: tuple[str, ...] = (
    "i'm not sure", "i am not sure", "i'm not certain", "i am not certain",
    "i cannot", "i can't", "i can not", "i'm unable", "i am unable", "unable to determine",
    "cannot determine", "can't determine", "as an ai", "as a language model",
    "i don't know", "i do not know", "it might be", "it could be either",
    "not enough information", "insufficient information",
)

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "`": "'"})


def normalize(text: str) -> str:
    """Lower-case, straight apostrophes, single spaces: how both phrases and answers are compared."""
    return " ".join(text.translate(_APOSTROPHES).casefold().split())


class RefusalVerifier(Verifier):
    """Fails when the answer contains a refusal or hedge phrase (whole words, case-insensitive)."""

    name = "refusal"

    class Options(BaseOptions):
        """`phrases` replace the default markers; `extra_phrases` are added to them."""

        phrases: tuple[str, ...] = DEFAULT_PHRASES
        extra_phrases: tuple[str, ...] = ()

    options: Options

    def __init__(self, options: RefusalVerifier.Options, context_dir: Path = Path(".")):
        super().__init__(options, context_dir)
        phrases = sorted({normalize(p) for p in options.phrases + options.extra_phrases if p.strip()},
                         key=len, reverse=True)  # longest first: report "i'm not sure", not a shorter overlap
        # Word boundaries so "as an ai" does not fire on "as an airline".
        self.regex = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, phrases)) + r")(?!\w)") if phrases else None

    def check(self, job: Job, attempt: Attempt, ctx: VerifyContext) -> Verdict:
        """Pass unless a marker phrase occurs in the answer."""
        match = self.regex.search(normalize(attempt.text)) if self.regex is not None else None
        return self.verdict(False, f"refusal marker: {match.group(0)}") if match else self.verdict(True)
