"""Configuration: the shipped files load, and every mistake is named by file and key."""

from __future__ import annotations

import pytest

from cascade.errors import ConfigError
from cascade.worker.config import load_settings
from tests.helpers import copy_config, copy_recorded_config


def test_shipped_config_loads_with_its_pipeline(tmp_path):
    settings = load_settings(copy_config(tmp_path), environ={})
    assert list(settings.tiers) == ["cheap", "mid", "frontier"]
    assert settings.tiers["cheap"].queue_name == "tier.cheap"
    pipeline = settings.pipeline("ticket-triage")
    assert pipeline.ladder == ("cheap", "mid", "frontier")
    assert pipeline.prompt.fields == ("subject", "body")
    assert settings.embedded


def test_unknown_key_names_file_and_key(tmp_path):
    path = copy_config(tmp_path, lambda t: t.replace("concurrency = 16", "concurency = 16"))
    with pytest.raises(ConfigError) as e:
        load_settings(path, environ={})
    assert str(e.value) == f"{path}: tiers.cheap.concurency: unknown key"


def test_bad_value_names_file_and_key(tmp_path):
    path = copy_config(tmp_path, lambda t: t.replace('provider = "openai"', 'provider = "openia"'))
    with pytest.raises(ConfigError) as e:
        load_settings(path, environ={})
    assert str(e.value) == f"{path}: tiers.cheap.provider: Input should be 'openai' or 'anthropic'"


def test_a_provider_url_that_is_no_http_url_names_the_key(tmp_path):
    path = copy_config(tmp_path, lambda t: t.replace('model = "gpt-4o-mini"',
                                                     'model = "gpt-4o-mini"\nbase_url = "localhost:8000/v1"', 1))
    with pytest.raises(ConfigError) as e:
        load_settings(path, environ={})
    assert str(e.value) == (f"{path}: tiers.cheap.base_url: must be an http:// or https:// URL with a "
                            "host (got 'localhost:8000/v1')")


def test_ladder_naming_a_missing_tier(tmp_path):
    path = copy_config(tmp_path)
    pipe = path.parent / "pipelines" / "ticket-triage.toml"
    pipe.write_text(pipe.read_text().replace('"frontier"]', '"frontir"]'))
    with pytest.raises(ConfigError) as e:
        load_settings(path, environ={})
    assert str(e.value) == f"{pipe}: ladder[2]: unknown tier 'frontir' ({path} has: cheap, frontier, mid)"


def test_verifier_option_that_does_not_exist(tmp_path):
    path = copy_config(tmp_path)
    pipe = path.parent / "pipelines" / "ticket-triage.toml"
    pipe.write_text(pipe.read_text().replace('{ name = "refusal" }', '{ name = "refusal", phrase = ["x"] }'))
    with pytest.raises(ConfigError) as e:
        load_settings(path, environ={})
    assert str(e.value) == f"{pipe}: verifiers.default[1].phrase: unknown option for verifier 'refusal'"


def test_unknown_key_in_a_pipeline(tmp_path):
    path = copy_config(tmp_path)
    pipe = path.parent / "pipelines" / "ticket-triage.toml"
    pipe.write_text("ladders = []\n" + pipe.read_text())
    with pytest.raises(ConfigError) as e:
        load_settings(path, environ={})
    assert str(e.value) == f"{pipe}: ladders: unknown key"


def test_model_without_price(tmp_path):
    path = copy_config(tmp_path, lambda t: t.replace('model = "gpt-4o-mini"', 'model = "gpt-9"', 1))
    with pytest.raises(ConfigError) as e:
        load_settings(path, environ={})
    assert str(e.value) == f"{path}: tiers.cheap.model: no price for 'gpt-9' in [prices]"


def test_template_with_non_field_placeholder(tmp_path):
    path = copy_config(tmp_path)
    pipe = path.parent / "pipelines" / "ticket-triage.toml"
    pipe.write_text(pipe.read_text().replace("{body}", "{body[0]}"))
    with pytest.raises(ConfigError) as e:
        load_settings(path, environ={})
    assert str(e.value).startswith(f"{pipe}: prompt.user: placeholder {{body[0]}} is not a plain field")


def test_environment_overrides_file_and_flag_overrides_environment(tmp_path):
    path = copy_config(tmp_path)
    env = {"CASCADE_TIER_CHEAP_CONCURRENCY": "3", "CASCADE_REDIS_URL": "redis://env:6379/0"}
    settings = load_settings(path, environ=env)
    assert settings.tiers["cheap"].concurrency == 3
    assert settings.redis.url == "redis://env:6379/0"
    flagged = load_settings(path, overrides={"redis.url": "redis://flag:6379/1"}, environ=env)
    assert flagged.redis.url == "redis://flag:6379/1"


def test_unknown_tier_key_in_environment(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_settings(copy_config(tmp_path), environ={"CASCADE_TIER_CHEAP_THREADS": "3"})
    assert str(e.value) == "environment CASCADE_TIER_CHEAP_THREADS: unknown key 'threads' for tier 'cheap'"


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_settings(tmp_path / "nope.toml", environ={})
    assert str(e.value) == f"{tmp_path / 'nope.toml'}: config file not found (set --config or CASCADE_CONFIG)"


def test_unknown_pipeline_lists_known_ones(tmp_path):
    settings = load_settings(copy_config(tmp_path), environ={})
    with pytest.raises(ConfigError) as e:
        settings.pipeline("triage")
    assert str(e.value) == f"unknown pipeline 'triage' (in {tmp_path / 'config' / 'pipelines'}: ticket-triage)"


def test_a_tier_whose_name_extends_another_gets_its_own_variables(tmp_path):
    # Given tiers `cheap` and `cheap_fast`
    path = copy_config(tmp_path, lambda t: t.replace("[tiers.mid]", '[tiers.cheap_fast]\nprovider = "openai"\n'
                                                     'model = "gpt-4o-mini"\n\n[tiers.mid]'))
    env = {"CASCADE_TIER_CHEAP_FAST_CONCURRENCY": "7", "CASCADE_TIER_CHEAP_CONCURRENCY": "3"}
    settings = load_settings(path, environ=env)
    assert settings.tiers["cheap_fast"].concurrency == 7
    assert settings.tiers["cheap"].concurrency == 3


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path):
    path = copy_config(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_settings(path, environ={"CASCADE_TIER_CHEAP_CONCURRENCY": "lots"})
    assert str(e.value).startswith("environment CASCADE_TIER_CHEAP_CONCURRENCY: Input should be a valid integer")
    with pytest.raises(ConfigError) as e:
        load_settings(path, environ={"CASCADE_HIGH_WATER": "0"})
    assert str(e.value) == "environment CASCADE_HIGH_WATER: Input should be greater than or equal to 1"


def test_batch_pricing_is_refused_with_what_to_write_instead(tmp_path):
    path = copy_config(tmp_path, lambda t: t.replace("concurrency = 16", "concurrency = 16\nbatch_pricing = true"))
    with pytest.raises(ConfigError) as e:
        load_settings(path, environ={})
    assert str(e.value) == (f"{path}: tiers.cheap: batch_pricing was removed: it billed live calls at the "
                            "batch price. Set mode = \"batch\" to send the tier's calls through the provider's Batch "
                            "API at that price")


def test_a_sampled_check_on_an_anthropic_batch_tier_is_refused(tmp_path):
    path = copy_config(tmp_path)
    pipe = path.parent / "pipelines" / "ticket-triage.toml"
    pipe.write_text(pipe.read_text().replace('{ name = "json", schema = "ticket.json" },',
                                             '{ name = "json", schema = "ticket.json" },\n'
                                             '  { name = "self_consistency", samples = 5 },'))
    settings = load_settings(path, environ={})          # live: n samples are n concurrent calls
    assert settings.tiers["mid"].mode == "live"
    with pytest.raises(ConfigError) as e:
        load_settings(path, environ={"CASCADE_TIER_MID_MODE": "batch"})
    assert str(e.value) == (f"{pipe}: verifiers.default[3]: 'self_consistency' samples 5 answers, and a message "
                            "batch request has no n: give tier 'mid' mode = \"live\", or drop the check")


def test_a_namespace_of_its_own_names_the_tier_queues_too(tmp_path):
    # two deployments sharing a Redis under different namespaces must not consume each other's messages
    path = copy_config(tmp_path)
    ours = load_settings(path, environ={"CASCADE_NAMESPACE": "team-b"})
    assert {n: t.queue_name for n, t in ours.tiers.items()} == {
        "cheap": "team-b.tier.cheap", "mid": "team-b.tier.mid", "frontier": "team-b.tier.frontier"}
    # the default namespace keeps the queues it always had (messages in flight stay where they are)
    default = load_settings(path, environ={})
    assert default.redis.namespace == "cascade" and default.tiers["cheap"].queue_name == "tier.cheap"
    # and a queue named in the file is kept as written
    named = load_settings(path, environ={"CASCADE_NAMESPACE": "team-b", "CASCADE_TIER_MID_QUEUE": "shared.mid"})
    assert named.tiers["mid"].queue_name == "shared.mid"


@pytest.mark.parametrize("labels, problem", [('["A", "", "C"]', "a label must not be empty"),
                                             ('["A", "B", "A"]', "listed twice: 'A'")])
def test_labels_must_be_distinct_and_not_empty(tmp_path, labels, problem):
    config = copy_recorded_config(tmp_path / "config")
    pipe = config / "pipelines" / "mmlu.toml"
    pipe.write_text(pipe.read_text().replace('labels = ["A", "B", "C", "D"]', f"labels = {labels}"))
    with pytest.raises(ConfigError) as e:
        load_settings(config / "cascade.toml", environ={}, check_verifiers=False)
    assert str(e.value) == f"{pipe}: labels: {problem}"
