"""JSON extraction past stray brackets; template specs checked when config loads; fields render as JSON."""

from __future__ import annotations

import pytest

from cascade.errors import ConfigError
from cascade.verifiers.parsing import extract_json
from cascade.worker.config import load_settings
from cascade.worker.config.schema import Prompt
from cascade.worker.prompts import render
from tests.helpers import copy_config


@pytest.mark.parametrize("text, value", [
    ('Sure :-[ here: {"a": 1}', {"a": 1}),
    ('[sic] the answer is {"b": [1, 2]}', {"b": [1, 2]}),
    ('see [1]: {"x": 2}', {"x": 2}),
])
def test_json_extraction_survives_brackets_of_prose(text, value):
    assert extract_json(text) == value


def test_a_truncated_object_is_still_not_answered_by_its_inner_fragment():
    with pytest.raises(ValueError, match="invalid JSON"):
        extract_json('{"a": {"b": 1}')


@pytest.mark.parametrize("user, problem", [
    ("{subject:>{width}}", "placeholder {subject:>{width}}: a format spec cannot name another field"),
    ("{subject:d}", "placeholder {subject:d}: bad format spec for text"),
])
def test_a_template_spec_that_would_fail_at_render_fails_at_load(tmp_path, user, problem):
    path = copy_config(tmp_path)
    pipeline = path.parent / "pipelines" / "ticket-triage.toml"
    text = pipeline.read_text()
    pipeline.write_text(text.replace('user = """Subject: {subject}', f'user = """Subject: {user}'))
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert str(error.value).startswith(f"{pipeline}: prompt.user: {problem}")


def test_non_string_fields_render_as_json():
    system, user = render(Prompt(system="{meta}", user="{tags} / {n} / {ok:>5}"),
                          {"meta": {"a": True, "b": None}, "tags": ["x", 1], "n": 3, "ok": False})
    assert system == '{"a":true,"b":null}' and user == '["x",1] / 3 / false'
