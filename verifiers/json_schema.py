"""The answer must be JSON and, when a schema is named, valid against it."""

from __future__ import annotations

from pathlib import Path

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from pydantic import Field

from cascade.models import Attempt, Job, Verdict
from cascade.verifiers.base import OptionError, Verifier, VerifyContext
from cascade.verifiers.base import Options as BaseOptions
from cascade.verifiers.parsing import clip, extract_json


class JsonVerifier(Verifier):
    """Parses the answer as JSON and validates it against a schema compiled once at build."""

    name = "json"

    class Options(BaseOptions):
        """`schema`: a file under <config>/schemas/, or an absolute path; none means "any JSON"."""

        # Aliased: a field called `schema` would shadow BaseModel.schema().
        schema_path: str | None = Field(default=None, alias="schema")

    options: Options

    def __init__(self, options: JsonVerifier.Options, context_dir: Path = Path(".")):
        super().__init__(options, context_dir)
        self.validator: Validator | None = None
        if options.schema_path is not None:
            self.validator = load_validator(schema_file(options.schema_path, context_dir))

    def check(self, job: Job, attempt: Attempt, ctx: VerifyContext) -> Verdict:
        """Pass when the text parses and (if configured) matches the schema."""
        try:
            value = extract_json(attempt.text)
        except ValueError as e:
            return self.verdict(False, str(e))
        if self.validator is not None:
            error = best_match(self.validator.iter_errors(value))
            if error is not None:
                return self.verdict(False, f"schema: {clip(error.message, 120)}")
        return self.verdict(True)


def schema_file(name: str, config_dir: Path) -> Path:
    """Where a schema option points: absolute as given, else under <config_dir>/schemas/."""
    path = Path(name)
    return path if path.is_absolute() else config_dir / "schemas" / path


def load_validator(path: Path) -> Validator:
    """Read, check and compile a JSON Schema (Draft 2020-12 unless its $schema says otherwise)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise OptionError("schema", f"file not found: {path}") from e
    except OSError as e:
        raise OptionError("schema", f"cannot read {path}: {e.strerror}") from e
    try:
        schema = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise OptionError("schema", f"invalid JSON in {path}: {e.msg} at char {e.pos}") from e
    if not isinstance(schema, (dict, bool)):
        raise OptionError("schema", f"not a JSON Schema (an object or a boolean): {path}")
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        raise OptionError("schema", f"invalid schema {path}: {clip(e.message, 120)}") from e
    return cls(schema, format_checker=cls.FORMAT_CHECKER)
