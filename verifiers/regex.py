"""The answer must (or must not) match a regular expression."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import StrictBool

from cascade.models import Attempt, Job, Verdict
from cascade.verifiers.base import OptionError, Verifier, VerifyContext
from cascade.verifiers.base import Options as BaseOptions
from cascade.verifiers.parsing import clip

_FLAGS = {"ASCII": re.ASCII, "DOTALL": re.DOTALL, "IGNORECASE": re.IGNORECASE, "MULTILINE": re.MULTILINE,
          "VERBOSE": re.VERBOSE, "A": re.ASCII, "S": re.DOTALL, "I": re.IGNORECASE, "M": re.MULTILINE,
          "X": re.VERBOSE}


class RegexVerifier(Verifier):
    """`re.search` of `pattern` in the answer; `must_match = false` turns it into a forbidden pattern."""

    name = "regex"

    class Options(BaseOptions):
        """`pattern` (required), `must_match` (default true), `flags` such as ["IGNORECASE", "DOTALL"]."""

        pattern: str
        must_match: StrictBool = True
        flags: tuple[str, ...] = ()

    options: Options

    def __init__(self, options: RegexVerifier.Options, context_dir: Path = Path(".")):
        super().__init__(options, context_dir)
        self.regex = compile_pattern(options.pattern, options.flags)

    def check(self, job: Job, attempt: Attempt, ctx: VerifyContext) -> Verdict:
        """Pass when the search result agrees with `must_match`."""
        match = self.regex.search(attempt.text)
        if self.options.must_match and match is None:
            return self.verdict(False, f"no match: /{clip(self.options.pattern, 60)}/")
        if not self.options.must_match and match is not None:
            return self.verdict(False, f"forbidden match: {clip(match.group(0), 40)!r}")
        return self.verdict(True)


def compile_pattern(pattern: str, flag_names: tuple[str, ...]) -> re.Pattern[str]:
    """Compile at build time so a bad pattern or flag is a config error, not a failure on every job."""
    flags = 0
    for i, name in enumerate(flag_names):
        flag = _FLAGS.get(name.upper())
        if flag is None:
            known = ", ".join(sorted(k for k in _FLAGS if len(k) > 1))
            raise OptionError(f"flags[{i}]", f"unknown regex flag '{name}' (known: {known})")
        flags |= flag
    try:
        return re.compile(pattern, flags)
    except re.error as e:
        raise OptionError("pattern", f"invalid regex: {e}") from e
