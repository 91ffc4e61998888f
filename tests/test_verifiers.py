"""Static verifiers, their registry and output parsing: every pass/fail case with its exact reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade.errors import ConfigError
from cascade.models import Attempt, Completion, Job, Usage, Verdict
from cascade.verifiers import build_verifier, known_verifiers
from cascade.verifiers.base import Verifier, VerifyContext
from cascade.verifiers.chain import VerifierChain
from cascade.verifiers.parsing import extract_json, normalize_label, parse_output
from cascade.verifiers.registry import REGISTRY, registry

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO_CONFIG = Path(__file__).resolve().parent.parent / "config"
WHERE = "config/pipelines/triage.toml: verifiers.cheap[1]"
JOB = Job("j1", {"subject": "s", "body": "b"})


def attempt(text: str, finish_reason: str = "stop") -> Attempt:
    """An attempt of the cheap tier with this answer text."""
    return Attempt("cheap", "m", text, finish_reason, Usage(), 0.0, 0.0)


def build(**spec) -> Verifier:
    """A verifier from an inline-table spec, schemas resolved under tests/fixtures/schemas."""
    return build_verifier(spec, FIXTURES, WHERE)


def check(verifier: Verifier, text: str, ctx: VerifyContext | None = None, finish_reason: str = "stop") -> Verdict:
    """One verdict on one answer."""
    return verifier.check(JOB, attempt(text, finish_reason), ctx or VerifyContext())


def config_error(**spec) -> str:
    """The message of the ConfigError building this spec raises."""
    with pytest.raises(ConfigError) as e:
        build_verifier(spec, FIXTURES, WHERE)
    return str(e.value)


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": 1}', {"a": 1}),
        ("  [1, 2]\n", [1, 2]),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('Here it is:\n```\n{"a": [1, 2]}\n```\nHope that helps.', {"a": [1, 2]}),
        ('Sure! {"category": "billing", "priority": "low"} Let me know if you need more.',
         {"category": "billing", "priority": "low"}),
        ('See [1]: {"a": "x}y"} thanks', {"a": "x}y"}),
        ('Answer: [{"a": 1}, {"a": 2}] done', [{"a": 1}, {"a": 2}]),
        ('"just a string"', "just a string"),
    ],
)
def test_extract_json_accepts_common_wrappings(text, expected):
    assert extract_json(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"a": 1 "b": 2}', "invalid JSON: unexpected character, expected ',' or '}' at char 8"),
        ("", "invalid JSON: Input is a zero-length, empty document at char 0"),
        ("hello there", "invalid JSON: unexpected character, expected a JSON value at char 0"),
        ('Result: {"a": 1,}', "invalid JSON: trailing comma is not allowed at char 7"),
    ],
)
def test_extract_json_names_the_error(text, message):
    with pytest.raises(ValueError) as e:
        extract_json(text)
    assert str(e.value) == message


def test_extract_json_ignores_fragments_of_an_unclosed_answer():
    # A truncated answer must not pass because an inner object happens to be complete.
    with pytest.raises(ValueError):
        extract_json('{"a": {"b": 1}, "c": ')


LABELS = ("billing", "technical", "other")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("billing", "billing"),
        ("  Billing.\n", "billing"),
        ('"TECHNICAL"', "technical"),
        ("Answer: other", "other"),
        ("label: `billing`", "billing"),
        ("**Other**!", "other"),
        ("The answer is: technical.", "technical"),
        ("urgent", None),
        ("billing and technical", None),
        ("", None),
    ],
)
def test_normalize_label(text, expected):
    assert normalize_label(text, LABELS) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("B", "B"), ("(b)", "B"), ("B.", "B"), ("Answer: (C)", "C"), ("[A]", "A"), ("B) Paris", "B"),
     ("D", None), ("A cat", None), ("Paris", None)],
)
def test_normalize_label_multiple_choice_letters(text, expected):
    assert normalize_label(text, ("A", "B", "C")) == expected


def test_letters_are_not_guessed_when_labels_are_words():
    assert normalize_label("(B)", LABELS) is None


def test_parse_output_by_format():
    assert parse_output("anything", "text", ()) is None
    assert parse_output('```json\n{"a": 1}\n```', "json", ()) == {"a": 1}
    assert parse_output("not json", "json", ()) is None
    assert parse_output("Answer: Billing", "label", LABELS) == "billing"
    assert parse_output("urgent", "label", LABELS) is None
    assert parse_output("x", "yaml", ()) is None


# -- truncation ---------------------------------------------------------------------------------


def test_truncation_passes_a_complete_answer():
    v = build(name="truncation")
    assert check(v, "ok") == Verdict("truncation", True, "")


@pytest.mark.parametrize("finish_reason", ["length", "max_tokens"])
def test_truncation_fails_on_attempt_finish_reason(finish_reason):
    assert check(build(name="truncation"), "ok", finish_reason=finish_reason) == Verdict(
        "truncation", False, "truncated at max_tokens")


def test_truncation_reads_the_completion():
    completion = Completion("ok", Usage(), "length", "m", 1.0)
    verdict = check(build(name="truncation"), "ok", VerifyContext(completion=completion))
    assert verdict.reason == "truncated at max_tokens" and not verdict.passed


# -- json ---------------------------------------------------------------------------------------


def test_json_without_schema_only_parses():
    v = build(name="json")
    assert check(v, '{"anything": [1]}').passed
    assert check(v, '{"a": 1 "b": 2}') == Verdict(
        "json", False, "invalid JSON: unexpected character, expected ',' or '}' at char 8")


def test_json_schema_pass_and_failures():
    v = build(name="json", schema="answer.json")
    assert check(v, 'Sure:\n```json\n{"label": "yes", "confidence": 0.9}\n```').passed
    assert check(v, '{"confidence": 0.5}').reason == "schema: 'label' is a required property"
    assert check(v, '{"label": "maybe"}').reason == "schema: 'maybe' is not one of ['yes', 'no']"
    assert check(v, '{"label": "no", "why": "x"}').reason == (
        "schema: Additional properties are not allowed ('why' was unexpected)")
    assert check(v, "yes").reason == "invalid JSON: unexpected character, expected a JSON value at char 0"


def test_json_schema_honours_its_declared_draft():
    v = build(name="json", schema="draft7.json")
    assert type(v.validator).__name__ == "Draft7Validator"
    assert check(v, "[1, 2]").passed
    assert check(v, '[1, "2"]').reason == "schema: '2' is not of type 'integer'"


def test_json_schema_absolute_path():
    v = build_verifier({"name": "json", "schema": str(FIXTURES / "schemas" / "answer.json")}, Path("/nowhere"), WHERE)
    assert check(v, '{"label": "no"}').passed


def test_shipped_ticket_schema():
    v = build_verifier({"name": "json", "schema": "ticket.json"}, REPO_CONFIG, WHERE)
    assert check(v, '{"category": "billing", "priority": "high"}').passed
    assert check(v, '{"category": "billing"}').reason == "schema: 'priority' is a required property"
    assert check(v, '{"category": "sales", "priority": "low"}').reason == (
        "schema: 'sales' is not one of ['billing', 'technical', 'account', 'shipping', 'other']")
    assert not check(v, '{"category": "other", "priority": "low", "note": "x"}').passed


def test_json_schema_problems_are_config_errors():
    assert config_error(name="json", schema="nope.json") == (
        f"{WHERE}.schema: file not found: {FIXTURES / 'schemas' / 'nope.json'}")
    assert config_error(name="json", schema="not_json.json") == (
        f"{WHERE}.schema: invalid JSON in {FIXTURES / 'schemas' / 'not_json.json'}: unexpected end of data at char 19")
    assert config_error(name="json", schema="broken.json").startswith(
        f"{WHERE}.schema: invalid schema {FIXTURES / 'schemas' / 'broken.json'}: 'strng' is not valid under")
    assert config_error(name="json", schema=3) == f"{WHERE}.schema: Input should be a valid string"


# -- choices ------------------------------------------------------------------------------------


def test_choices_uses_pipeline_labels():
    v = build(name="choices")
    ctx = VerifyContext(labels=("billing", "other"))
    assert check(v, "Billing.", ctx).passed
    assert check(v, "urgent", ctx) == Verdict("choices", False, "unknown label: 'urgent' not in [billing, other]")


def test_choices_own_labels_win_over_pipeline_labels():
    v = build(name="choices", labels=["yes", "no"])
    assert check(v, "YES", VerifyContext(labels=("billing",))).passed
    assert check(v, "billing", VerifyContext(labels=("billing",))).reason == (
        "unknown label: 'billing' not in [yes, no]")


def test_choices_without_any_labels():
    assert check(build(name="choices"), "billing").reason == "no labels configured"


def test_choices_field_of_json_answer():
    v = build(name="choices", field="category", labels=["billing", "other"])
    assert check(v, '{"category": "Billing", "priority": "low"}').passed
    assert check(v, '{"category": "sales"}').reason == "unknown label: 'sales' not in [billing, other]"
    assert check(v, '{"priority": "low"}').reason == "missing field: category"
    assert check(v, '["billing"]').reason == "missing field: category"
    assert check(v, '{"category": 3}').reason == "unknown label: '3' not in [billing, other]"
    assert check(v, "billing").reason.startswith("invalid JSON: ")


def test_choices_dotted_field_and_letters():
    v = build(name="choices", field="answer.choice", labels=["A", "B"])
    assert check(v, '{"answer": {"choice": "(b)"}}').passed
    assert check(v, '{"answer": {}}').reason == "missing field: answer.choice"


def test_choices_clips_a_long_answer():
    reason = check(build(name="choices", labels=["a"]), "word " * 40).reason
    assert reason.startswith("unknown label: 'word word") and "…" in reason and len(reason) < 80


def test_choices_rejects_an_empty_label_list():
    assert config_error(name="choices", labels=[]) == (
        f"{WHERE}.labels: Tuple should have at least 1 item after validation, not 0")


# -- regex --------------------------------------------------------------------------------------


def test_regex_must_match():
    v = build(name="regex", pattern=r"^\d{3}$")
    assert check(v, "123").passed
    assert check(v, "12a") == Verdict("regex", False, r"no match: /^\d{3}$/")


def test_regex_forbidden_pattern_and_flags():
    v = build(name="regex", pattern="lorem.ipsum", must_match=False, flags=["IGNORECASE", "DOTALL"])
    assert check(v, "all good").passed
    assert check(v, "LOREM\nIPSUM dolor").reason == "forbidden match: 'LOREM IPSUM'"


def test_regex_config_errors():
    assert config_error(name="regex") == f"{WHERE}.pattern: required option for verifier 'regex' is missing"
    assert config_error(name="regex", pattern="(") == (
        f"{WHERE}.pattern: invalid regex: missing ), unterminated subpattern at position 0")
    assert config_error(name="regex", pattern="x", flags=["I", "NOPE"]) == (
        f"{WHERE}.flags[1]: unknown regex flag 'NOPE' (known: ASCII, DOTALL, IGNORECASE, MULTILINE, VERBOSE)")
    assert config_error(name="regex", pattern="x", must_match="yes") == (
        f"{WHERE}.must_match: Input should be a valid boolean")


# -- refusal ------------------------------------------------------------------------------------


def test_refusal_passes_a_plain_answer():
    assert check(build(name="refusal"), '{"category": "billing", "priority": "low"}').passed


@pytest.mark.parametrize(
    "text, marker",
    [
        ("I'm not sure, maybe billing?", "i'm not sure"),
        ("I’m NOT  sure.", "i'm not sure"),
        ("As an AI, I cannot see your account.", "as an ai"),
        ("It might be technical.", "it might be"),
        ("There is not enough information to decide.", "not enough information"),
    ],
)
def test_refusal_markers(text, marker):
    assert check(build(name="refusal"), text) == Verdict("refusal", False, f"refusal marker: {marker}")


def test_refusal_matches_whole_words_only():
    assert check(build(name="refusal"), "As an airline customer I was charged twice.").passed


def test_refusal_custom_and_extra_phrases():
    only = build(name="refusal", phrases=["no idea"])
    assert check(only, "I cannot say").passed
    assert check(only, "No idea.").reason == "refusal marker: no idea"
    extra = build(name="refusal", extra_phrases=["Beats me"])
    assert check(extra, "beats me").reason == "refusal marker: beats me"
    assert check(extra, "I can't tell").reason == "refusal marker: i can't"
    assert check(build(name="refusal", phrases=[]), "I don't know").passed


# -- length -------------------------------------------------------------------------------------


def test_length_bounds():
    v = build(name="length", min_chars=10, max_chars=20, min_words=2, max_words=3)
    assert check(v, "  hello there  ").passed
    assert check(v, " abc ") == Verdict("length", False, "too short: 3 < 10 chars")
    assert check(v, "x" * 21).reason == "too long: 21 > 20 chars"
    assert check(v, "helloworld").reason == "too short: 1 < 2 words"
    assert check(v, "a b c d e f").reason == "too long: 6 > 3 words"


def test_length_without_bounds_passes_anything():
    assert check(build(name="length"), "").passed


def test_length_config_errors():
    assert config_error(name="length", min_chars="ten") == f"{WHERE}.min_chars: Input should be a valid integer"
    assert config_error(name="length", max_words=-1) == (
        f"{WHERE}.max_words: Input should be greater than or equal to 0")
    assert config_error(name="length", min_chars=10, max_chars=5) == f"{WHERE}.max_chars: 5 is below min_chars 10"


# -- custom -------------------------------------------------------------------------------------


@pytest.fixture
def checks_on_path(monkeypatch):
    """Make tests/fixtures/custom_checks.py importable as `custom_checks`."""
    monkeypatch.syspath_prepend(str(FIXTURES))


def test_custom_bool_result_with_options(checks_on_path):
    v = build(name="custom", path="custom_checks:has_word", options={"word": "refund"})
    assert check(v, "please refund me") == Verdict("custom:has_word", True, "")
    assert check(v, "hello") == Verdict("custom:has_word", False, "rejected")


def test_custom_tuple_and_verdict_results(checks_on_path):
    assert check(build(name="custom", path="custom_checks:with_reason"), "x") == (
        Verdict("custom:with_reason", False, "mentions: nothing"))
    assert check(build(name="custom", path="custom_checks:full_verdict"), "x") == Verdict("mine", True, "fine", 0.9)


def test_custom_wrong_result_type_raises(checks_on_path):
    with pytest.raises(TypeError, match="returned str, expected Verdict, bool or"):
        check(build(name="custom", path="custom_checks:wrong_type"), "x")


def test_custom_config_errors(checks_on_path):
    assert config_error(name="custom") == f"{WHERE}.path: required option for verifier 'custom' is missing"
    assert config_error(name="custom", path="custom_checks") == (
        f"{WHERE}.path: expected 'package.module:callable', got 'custom_checks'")
    assert config_error(name="custom", path="no_such_module_xyz:f") == (
        f"{WHERE}.path: cannot import 'no_such_module_xyz': ModuleNotFoundError: No module named 'no_such_module_xyz'")
    assert config_error(name="custom", path="custom_checks:missing") == (
        f"{WHERE}.path: 'custom_checks' has no attribute 'missing'")
    assert config_error(name="custom", path="custom_checks:NOT_CALLABLE") == (
        f"{WHERE}.path: 'custom_checks:NOT_CALLABLE' is not callable")
    assert config_error(name="custom", path="custom_checks:has_word", options={"colour": "red"}) == (
        f"{WHERE}.options: does not fit has_word: got an unexpected keyword argument 'colour'")


# -- registry -----------------------------------------------------------------------------------


def test_known_verifiers_and_fresh_registry():
    assert known_verifiers() == ["choices", "custom", "json", "judge", "length", "logprob", "refusal", "regex",
                                 "self_consistency", "truncation"]
    mine = registry()
    mine.pop("json")
    assert "json" in registry()
    assert {name: cls.cost_rank for name, cls in registry().items() if cls.cost_rank} == {
        "logprob": 1, "self_consistency": 2, "judge": 3}     # signals after the free checks, cheapest first
    assert sorted(REGISTRY) == known_verifiers()
    with pytest.raises(TypeError):
        REGISTRY["x"] = Verifier  # type: ignore[index]


def test_registry_error_messages():
    assert config_error() == f"{WHERE}.name: missing verifier name"
    assert config_error(name="foo") == (
        f"{WHERE}.name: unknown verifier 'foo' (known: choices, custom, json, judge, length, logprob, refusal, regex, "
        "self_consistency, truncation)")
    assert config_error(name="truncation", strict=True) == f"{WHERE}.strict: unknown option for verifier 'truncation'"
    assert config_error(name="refusal", phrase=["x"]) == f"{WHERE}.phrase: unknown option for verifier 'refusal'"
    assert config_error(name="length", min_chars=1.5) == f"{WHERE}.min_chars: Input should be a valid integer"
    assert config_error(name="refusal", phrases=["ok", 3]) == f"{WHERE}.phrases[1]: Input should be a valid string"


def test_a_misspelt_option_is_reported_before_the_missing_one():
    assert config_error(name="regex", patern="x") == f"{WHERE}.patern: unknown option for verifier 'regex'"


def test_build_returns_configured_instance():
    v = build(name="regex", pattern="a")
    assert v.name == "regex" and v.options.pattern == "a" and v.options.must_match is True


# -- chain --------------------------------------------------------------------------------------


class Fixed(Verifier):
    """A verifier with a set rank and a set verdict, recording each call."""

    def __init__(self, name: str, rank: int, passed: bool, calls: list[str]):
        super().__init__(Verifier.Options())
        self.name, self.cost_rank, self.passed, self.calls = name, rank, passed, calls

    def check(self, job, attempt, ctx):
        """Record the call, return the set verdict."""
        self.calls.append(self.name)
        return self.verdict(self.passed, "" if self.passed else "nope: x")


class Crashing(Verifier):
    """A verifier with a bug."""

    name = "crashing"

    def check(self, job, attempt, ctx):
        """Always raises."""
        raise KeyError("category")


def test_chain_runs_cheapest_first_keeping_config_order_among_equals():
    calls: list[str] = []
    chain = VerifierChain([Fixed("judge", 3, True, calls), Fixed("a", 0, True, calls),
                           Fixed("logprob", 1, True, calls), Fixed("b", 0, True, calls)])
    verdicts = chain.run(JOB, attempt("x"), VerifyContext())
    assert calls == ["a", "b", "logprob", "judge"]
    assert [v.verifier for v in verdicts] == calls and all(v.passed for v in verdicts)
    assert len(chain) == 4


def test_chain_stops_at_first_failure():
    calls: list[str] = []
    chain = VerifierChain([Fixed("a", 0, True, calls), Fixed("b", 0, False, calls), Fixed("c", 0, True, calls)])
    verdicts = chain.run(JOB, attempt("x"), VerifyContext())
    assert verdicts == (Verdict("a", True, ""), Verdict("b", False, "nope: x"))
    assert calls == ["a", "b"]


def test_chain_turns_a_crash_into_a_failed_verdict(caplog):
    calls: list[str] = []
    chain = VerifierChain([Crashing(Verifier.Options()), Fixed("after", 0, True, calls)])
    verdicts = chain.run(JOB, attempt("x"), VerifyContext())
    assert verdicts == (Verdict("crashing", False, "error: KeyError: 'category'"),)
    assert calls == []
    assert "verifier crashing crashed on job j1" in caplog.text


def test_chain_of_built_verifiers_on_the_shipped_pipeline():
    specs = [{"name": "truncation"}, {"name": "refusal"}, {"name": "json", "schema": "ticket.json"}]
    chain = VerifierChain([build_verifier(s, REPO_CONFIG, f"p: verifiers.default[{i}]") for i, s in enumerate(specs)])
    good = chain.run(JOB, attempt('{"category": "account", "priority": "medium"}'), VerifyContext())
    assert [v.passed for v in good] == [True, True, True]
    cut = chain.run(JOB, attempt('{"category": "acc', "length"), VerifyContext())
    assert cut == (Verdict("truncation", False, "truncated at max_tokens"),)


def test_custom_crash_inside_chain(checks_on_path):
    chain = VerifierChain([build(name="custom", path="custom_checks:boom")])
    assert chain.run(JOB, attempt("x"), VerifyContext()) == (Verdict("custom", False, "error: RuntimeError: exploded"),)
