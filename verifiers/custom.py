"""A project's own check: a Python callable named by "package.module:callable"."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from cascade.models import Attempt, Job, Verdict
from cascade.verifiers.base import OptionError, Verifier, VerifyContext
from cascade.verifiers.base import Options as BaseOptions


class CustomVerifier(Verifier):
    """Calls `fn(job, attempt, ctx, **options)`; a bool or (bool, reason) result becomes a Verdict."""

    name = "custom"

    class Options(BaseOptions):
        """`path` is "package.module:callable"; `options` are passed to it as keyword arguments."""

        path: str
        options: dict[str, Any] = Field(default_factory=dict)

    options: Options

    def __init__(self, options: CustomVerifier.Options, context_dir: Path = Path(".")):
        super().__init__(options, context_dir)
        self.fn = import_callable(options.path)
        self.label = f"custom:{options.path.rpartition(':')[2]}"
        _check_signature(self.fn, options.options)

    def check(self, job: Job, attempt: Attempt, ctx: VerifyContext) -> Verdict:
        """Run the callable and wrap what it returns."""
        result = self.fn(job, attempt, ctx, **self.options.options)
        if isinstance(result, Verdict):
            return result
        if isinstance(result, bool):
            return Verdict(self.label, result, "" if result else "rejected")
        if (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], bool)
                and isinstance(result[1], str)):
            return Verdict(self.label, result[0], result[1])
        raise TypeError(f"{self.options.path} returned {type(result).__name__}, "
                        "expected Verdict, bool or (bool, str)")


def import_callable(path: str) -> Callable[..., Any]:
    """Import "package.module:callable" now, so a typo is a startup error naming the `path` key."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise OptionError("path", f"expected 'package.module:callable', got '{path}'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any import-time failure (missing module, syntax error, its own bug) is a config error
        raise OptionError("path", f"cannot import '{module_name}': {type(e).__name__}: {e}") from e
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise OptionError("path", f"'{module_name}' has no attribute '{attr}'")
        target = getattr(target, part)
    if not callable(target):
        raise OptionError("path", f"'{path}' is not callable")
    return target


def _check_signature(fn: Callable[..., Any], options: dict[str, Any]) -> None:
    """Reject options the callable cannot take, at build time."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # some builtins have no introspectable signature; the call itself will tell
    try:
        signature.bind(None, None, None, **options)
    except TypeError as e:
        raise OptionError("options", f"does not fit {getattr(fn, '__name__', fn)!s}: {e}") from e
