"""The provider simulator, driven through the real OpenAI and Anthropic SDKs over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest

from cascade.errors import ConfigError
from cascade.simulator import Scenario, SimServer, load_scenario, parse_scenario
from cascade.simulator.tokens import count_tokens, prompt_tokens

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "scenario.toml"

ANSWER = '{"category": "billing", "priority": "medium"}'
OTHER = '{"category": "other", "priority": "low"}'

SCENARIO = f"""
seed = 11

[[rules]]
match = "(?i)refund|charged|invoice"
answer = '{ANSWER}'
wrong = ['{{"category": "account", "priority": "medium"}}', '{{"category": "technical", "priority": "low"}}']

[[rules]]
match = ".*"
answer = '{OTHER}'

[defaults]
latency_ms = [0, 0]
retry_after_s = 0.25
timeout_s = 0.3

[models.sure]
outcome = {{ correct = 1.0 }}

[models.cheap]
outcome = {{ correct = 0.6, wrong = 0.1, malformed = 0.1, hedge = 0.1, truncated = 0.1 }}
latency_ms = [1, 3]

[models.cutoff]
outcome = {{ truncated = 1.0 }}

[models.throttled]
error_rate = {{ "429" = 1.0 }}

[models.flaky]
error_rate = {{ "429" = 0.5 }}

[models.broken]
error_rate = {{ "500" = 1.0 }}

[models.stalls]
error_rate = {{ "timeout" = 1.0 }}

[models.limited]
rpm = 5

[models.budget]
tpm = 100

[models.small]
context_window = 50
"""

SYSTEM = "You triage support tickets. Answer with JSON."
TICKET = "Subject: Refund please\n\nI was charged for a plan I cancelled."


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return parse_scenario(SCENARIO, "test-scenario.toml")


@pytest.fixture(scope="module")
def server(scenario: Scenario) -> Iterator[SimServer]:
    with SimServer(scenario) as sim:
        yield sim


@pytest.fixture
def oai(server: SimServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sim", max_retries=0, timeout=10)
    yield client
    client.close()


@pytest.fixture
def claude(server: SimServer) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=server.url, api_key="sim", max_retries=0, timeout=10)
    yield client
    client.close()


def ask_openai(client: openai.OpenAI, model: str, text: str, **kw):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return client.chat.completions.create(model=model, messages=messages, **kw)


def ask_claude(client: anthropic.Anthropic, model: str, text: str, max_tokens: int = 64, **kw):
    return client.messages.create(
        model=model, max_tokens=max_tokens, system=SYSTEM, messages=[{"role": "user", "content": text}], **kw
    )


def model_stats(server: SimServer, model: str) -> dict:
    return server.stats()["models"][model]


# --- correct answers through both SDKs ---------------------------------------------------------


def test_openai_sdk_parses_a_correct_answer_with_usage_and_logprobs(oai):
    reply = ask_openai(oai, "sure", TICKET, logprobs=True, max_tokens=64)
    choice = reply.choices[0]
    assert choice.message.content == ANSWER
    assert choice.finish_reason == "stop"
    assert reply.model == "sure"
    assert reply.object == "chat.completion"
    assert reply.usage.prompt_tokens == prompt_tokens([SYSTEM, TICKET])
    assert reply.usage.completion_tokens == count_tokens(ANSWER)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.usage.prompt_tokens_details.cached_tokens == 0
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == ANSWER
    assert all(-0.05 <= t.logprob <= -0.001 for t in tokens)
    assert all(bytes(t.bytes) == t.token.encode() and t.top_logprobs == [] for t in tokens)


def test_openai_without_logprobs_returns_null_logprobs(oai):
    reply = ask_openai(oai, "sure", TICKET)
    assert reply.choices[0].logprobs is None


def test_anthropic_sdk_parses_a_correct_answer(claude):
    reply = ask_claude(claude, "sure", TICKET)
    assert reply.type == "message" and reply.role == "assistant" and reply.model == "sure"
    assert [block.type for block in reply.content] == ["text"]
    assert reply.content[0].text == ANSWER
    assert reply.stop_reason == "end_turn" and reply.stop_sequence is None
    assert reply.usage.input_tokens == prompt_tokens([SYSTEM, TICKET])
    assert reply.usage.output_tokens == count_tokens(ANSWER)
    assert reply.usage.cache_read_input_tokens == 0 and reply.usage.cache_creation_input_tokens == 0


def test_unlisted_model_uses_defaults_and_is_always_right(oai, claude):
    assert ask_openai(oai, "some-new-model", "hello").choices[0].message.content == OTHER
    assert ask_claude(claude, "another-model", TICKET).content[0].text == ANSWER


def test_n_samples_choice_zero_equals_the_single_answer(oai, scenario):
    prompt = "Subject: invoice\n\nMy invoice shows the wrong VAT number, sample test"
    many = ask_openai(oai, "cheap", prompt, n=3, logprobs=True)
    one = ask_openai(oai, "cheap", prompt)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert many.choices[0].message.content == one.choices[0].message.content
    for index, choice in enumerate(many.choices):
        predicted = scenario.answer("cheap", prompt, index)
        assert choice.message.content == predicted.text
        assert [(t.token, t.logprob) for t in choice.logprobs.content] == list(predicted.logprobs)
    assert many.usage.completion_tokens == sum(scenario.answer("cheap", prompt, i).output_tokens for i in range(3))


# --- prediction -------------------------------------------------------------------------------


def test_scenario_predicts_exactly_what_the_server_answers(server, oai, claude, scenario):
    server.reset_stats()
    prompts = [
        f"Subject: ticket {i}\n\n"
        + ("I want a refund for order" if i % 2 else "The export button does nothing")
        + f" #{i}"
        for i in range(50)
    ]
    outcomes = Counter()
    for i, prompt in enumerate(prompts):
        predicted = scenario.answer("cheap", prompt, max_tokens=64)
        outcomes[predicted.outcome] += 1
        if i % 5 == 0:
            reply = ask_claude(claude, "cheap", prompt, max_tokens=64)
            assert reply.content[0].text == predicted.text
            assert reply.stop_reason == ("max_tokens" if predicted.finish == "length" else "end_turn")
            assert reply.usage.output_tokens == predicted.output_tokens
        else:
            reply = ask_openai(oai, "cheap", prompt, max_tokens=64, logprobs=True)
            choice = reply.choices[0]
            assert choice.message.content == predicted.text
            assert choice.finish_reason == predicted.finish
            assert reply.usage.completion_tokens == predicted.output_tokens
            assert [(t.token, t.logprob) for t in choice.logprobs.content] == list(predicted.logprobs)
        assert scenario.outcome("cheap", prompt) == predicted.outcome
    # the mix roughly follows the 0.6 / 0.1 x 4 probabilities
    assert 22 <= outcomes["correct"] <= 40
    assert len(outcomes) >= 4
    assert model_stats(server, "cheap")["answers"] == {o: outcomes[o] for o in model_stats(server, "cheap")["answers"]}
    assert model_stats(server, "cheap")["requests"] == 50


def test_outcome_texts(scenario):
    def first(outcome: str) -> str:
        return next(f"refund {i}" for i in range(1000) if scenario.outcome("cheap", f"refund {i}") == outcome)

    wrong = scenario.answer("cheap", first("wrong"))
    assert wrong.text in (
        '{"category": "account", "priority": "medium"}',
        '{"category": "technical", "priority": "low"}',
    )
    assert all(-2.5 <= lp <= -1.2 for _, lp in wrong.logprobs)
    malformed = scenario.answer("cheap", first("malformed")).text
    assert malformed.startswith(ANSWER[:-1]) and not malformed.startswith(ANSWER)
    with pytest.raises(json.JSONDecodeError):
        json.loads(malformed)
    assert scenario.answer("cheap", first("hedge")).text == "I'm not sure, but it might be: " + ANSWER
    truncated = scenario.answer("cheap", first("truncated"), max_tokens=40)
    assert truncated.finish == "length" and ANSWER.startswith(truncated.text) and truncated.text != ANSWER
    assert truncated.output_tokens == 40


def test_determinism_does_not_depend_on_the_instance():
    one, two = parse_scenario(SCENARIO), parse_scenario(SCENARIO)
    for i in range(20):
        assert one.answer("cheap", f"prompt {i}", i % 3) == two.answer("cheap", f"prompt {i}", i % 3)
    reseeded = parse_scenario(SCENARIO.replace("seed = 11", "seed = 12"))
    assert [one.outcome("cheap", f"p{i}") for i in range(40)] != [reseeded.outcome("cheap", f"p{i}") for i in range(40)]


# --- truncation -------------------------------------------------------------------------------


def test_truncated_answers_finish_with_length_and_max_tokens(oai, claude):
    reply = ask_openai(oai, "cutoff", TICKET, max_tokens=30)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 30
    assert ANSWER.startswith(reply.choices[0].message.content) and reply.choices[0].message.content != ANSWER
    reply = ask_openai(oai, "cutoff", TICKET, max_completion_tokens=25)
    assert reply.usage.completion_tokens == 25

    message = ask_claude(claude, "cutoff", TICKET, max_tokens=30)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 30
    assert ANSWER.startswith(message.content[0].text) and message.content[0].text != ANSWER


def test_a_small_max_tokens_cuts_a_correct_answer(oai):
    reply = ask_openai(oai, "sure", TICKET, max_tokens=4)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 4
    assert count_tokens(reply.choices[0].message.content) == 4


# --- injected errors --------------------------------------------------------------------------


def test_injected_429_carries_retry_after(server, oai, claude):
    before = model_stats(server, "throttled")["errors"]["429"] if "throttled" in server.stats()["models"] else 0
    with pytest.raises(openai.RateLimitError) as caught:
        ask_openai(oai, "throttled", TICKET)
    assert caught.value.response.headers["retry-after"] == "0.25"
    assert caught.value.response.headers["retry-after-ms"] == "250"
    assert caught.value.code == "rate_limit_exceeded"
    with pytest.raises(anthropic.RateLimitError) as caught_a:
        ask_claude(claude, "throttled", TICKET)
    assert caught_a.value.response.headers["retry-after"] == "0.25"
    assert caught_a.value.body["error"]["type"] == "rate_limit_error"
    assert model_stats(server, "throttled")["errors"]["429"] == before + 2
    assert model_stats(server, "throttled")["rate_limited_429"] == 0


def test_a_retry_of_the_same_request_can_succeed(server, oai, scenario):
    server.reset_stats()  # forget earlier sightings so occurrence indexes start at 0
    prompt = next(
        f"flaky {i}"
        for i in range(1000)
        if scenario.injected_error("flaky", f"flaky {i}", 0) == "429"
        and scenario.injected_error("flaky", f"flaky {i}", 1) is None
    )
    with pytest.raises(openai.RateLimitError):
        ask_openai(oai, "flaky", prompt)
    assert ask_openai(oai, "flaky", prompt).choices[0].message.content == OTHER


def test_injected_500(server, oai, claude):
    with pytest.raises(openai.InternalServerError) as caught:
        ask_openai(oai, "broken", TICKET)
    assert caught.value.body["type"] == "server_error"
    with pytest.raises(anthropic.InternalServerError) as caught_a:
        ask_claude(claude, "broken", TICKET)
    assert caught_a.value.body["error"]["type"] == "api_error"
    assert model_stats(server, "broken")["errors"]["500"] >= 2


def test_injected_timeout_closes_the_connection_or_times_out(server, oai):
    started = time.monotonic()
    with pytest.raises(openai.APIConnectionError):  # the server closes after timeout_s = 0.3
        ask_openai(oai, "stalls", TICKET)
    assert 0.25 <= time.monotonic() - started < 5
    with pytest.raises(openai.APITimeoutError):  # a client that gives up first
        ask_openai(oai.with_options(timeout=0.1), "stalls", TICKET + " again")
    assert model_stats(server, "stalls")["errors"]["timeout"] == 2


# --- rate limits ------------------------------------------------------------------------------


def test_rpm_limit_refuses_the_sixth_request_in_a_minute(server, oai):
    remaining = []
    for i in range(5):
        raw = oai.chat.completions.with_raw_response.create(
            model="limited", messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=32
        )
        assert raw.parse().choices[0].finish_reason == "stop"
        assert raw.headers["x-ratelimit-limit-requests"] == "5"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in raw.headers  # tpm unlimited
    assert remaining == [4, 3, 2, 1, 0]
    with pytest.raises(openai.RateLimitError) as caught:
        ask_openai(oai, "limited", "hello 6")
    retry_after = int(caught.value.response.headers["retry-after"])
    assert 0 < retry_after <= 60
    assert caught.value.body["type"] == "requests"
    stats = model_stats(server, "limited")
    assert stats["rate_limited_429"] == 1
    assert stats["errors"]["429"] == 0
    assert stats["ok"] == 5


def test_tpm_limit_counts_prompt_plus_max_tokens(server, claude):
    raw = claude.messages.with_raw_response.create(
        model="budget", max_tokens=60, messages=[{"role": "user", "content": "hi"}]
    )
    headers = raw.headers
    assert headers["anthropic-ratelimit-tokens-limit"] == "100"
    assert int(headers["anthropic-ratelimit-tokens-remaining"]) == 100 - 60 - prompt_tokens(["hi"])
    assert datetime.fromisoformat(headers["anthropic-ratelimit-tokens-reset"]).tzinfo is not None
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask_claude(claude, "budget", "hi again", max_tokens=90)
    assert int(caught.value.response.headers["retry-after"]) > 0
    assert model_stats(server, "budget")["rate_limited_429"] == 1


def test_tpm_openai_keeps_max_tokens_anthropic_settles_to_the_output():
    # Given a model limited to 120 tokens a minute, and a first call reserving prompt + 60
    # When a second call asks for 60 more: OpenAI still counts the first call's 60, Anthropic only
    # the output it produced (the short JSON answer), so only Anthropic admits it
    scenario = parse_scenario(f"[[rules]]\nmatch = '.*'\nanswer = '{OTHER}'\n[models.oai]\ntpm = 120\n"
                              "[models.claude]\ntpm = 120\n")
    with SimServer(scenario) as sim, \
            openai.OpenAI(base_url=sim.url + "/v1", api_key="sim", max_retries=0, timeout=10) as oai, \
            anthropic.Anthropic(base_url=sim.url, api_key="sim", max_retries=0, timeout=10) as claude:
        ask_openai(oai, "oai", "hi", max_tokens=60)
        with pytest.raises(openai.RateLimitError):
            ask_openai(oai, "oai", "hi again", max_tokens=60)
        first = ask_claude(claude, "claude", "hi", max_tokens=60)
        assert first.usage.output_tokens < 30
        assert ask_claude(claude, "claude", "hi again", max_tokens=60).stop_reason == "end_turn"
        assert model_stats(sim, "claude")["rate_limited_429"] == 0


# --- context window ---------------------------------------------------------------------------


def test_context_window_overflow_is_a_400_for_both_apis(server, oai, claude):
    long_text = "word " * 80
    tokens = prompt_tokens([SYSTEM, long_text])
    with pytest.raises(openai.BadRequestError) as caught:
        ask_openai(oai, "small", long_text)
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length is 50 tokens" in caught.value.message
    with pytest.raises(anthropic.BadRequestError) as caught_a:
        ask_claude(claude, "small", long_text)
    assert caught_a.value.body["error"] == {
        "type": "invalid_request_error",
        "message": f"prompt is too long: {tokens} tokens > 50 maximum",
    }
    assert ask_openai(oai, "small", "short").choices[0].message.content == OTHER
    assert model_stats(server, "small")["context_400"] == 2


# --- HTTP surface -----------------------------------------------------------------------------


def test_health_stats_and_reset_over_http(server, oai):
    assert httpx2.get(server.url + "/health").json() == {"status": "ok"}
    ask_openai(oai, "sure", TICKET)
    stats = httpx2.get(server.url + "/stats").json()
    assert stats == server.stats()
    assert stats["models"]["sure"]["requests"] >= 1 and stats["apis"]["openai"] >= 1
    assert httpx2.post(server.url + "/stats/reset").json() == {"reset": True}
    assert server.stats()["totals"]["requests"] == 0
    assert httpx2.post(server.url + "/v1/nothing", json={}).status_code == 404


def test_bad_requests_are_400(server, claude):
    response = httpx2.post(server.url + "/v1/chat/completions", content=b"not json")
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    no_max_tokens = {"model": "sure", "messages": [{"role": "user", "content": "x"}]}
    response = httpx2.post(server.url + "/v1/messages", json=no_max_tokens)
    assert response.status_code == 400 and "max_tokens" in response.json()["error"]["message"]


def test_listens_on_loopback_or_every_interface_of_a_container_only(scenario):
    with pytest.raises(ValueError, match=r"loopback \(127.0.0.1\), or 0.0.0.0 inside a container; not '10.1.2.3'"):
        SimServer(scenario, host="10.1.2.3")
    assert SimServer(scenario, host="0.0.0.0").host == "0.0.0.0"   # bound only when started (compose's sim)
    with SimServer(scenario, host="localhost") as sim:
        assert sim.url.startswith("http://127.0.0.1:")


def test_stop_does_not_wait_for_sleeping_requests():
    slow = parse_scenario("[defaults]\nlatency_ms = [5000, 5000]\n")
    sim = SimServer(slow).start()
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="sim", max_retries=0, timeout=10)
    raised: list[BaseException] = []

    def call() -> None:
        try:
            ask_openai(client, "m", "x")
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            raised.append(e)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    sim.stop()
    thread.join(5)
    assert time.monotonic() - started < 2 and not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], openai.APIConnectionError)


def test_serve_forever_announces_and_stops_on_sigterm(tmp_path):
    port_file = tmp_path / "port"
    code = "import sys; from simulator.server import serve_forever; serve_forever(sys.argv[1], port_file=sys.argv[2])"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(EXAMPLE), str(port_file)], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        port = int(port_file.read_text())
        assert httpx2.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert f"simulator listening on http://127.0.0.1:{port}" in stderr
    assert not port_file.exists()


# --- scenario files ---------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, '[models."gpt-4o-mini"]\noutcome = { corect = 1.0 }\n')
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    assert str(caught.value) == f"{path}: models.gpt-4o-mini.outcome.corect: unknown key"

    path = write(tmp_path, "seed = 1\nsed = 2\n")
    with pytest.raises(ConfigError, match="^.*scenario.toml: sed: unknown key$"):
        load_scenario(path)
    path = write(tmp_path, "[defaults]\nlatency = [1, 2]\n")
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    assert str(caught.value) == f"{path}: defaults.latency: unknown key"
    path = write(tmp_path, "[[rules]]\nmatch = 'x'\nanswer = 'y'\nwrongs = []\n")
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    assert str(caught.value) == f"{path}: rules[0].wrongs: unknown key"


def test_outcome_probabilities_must_sum_to_one(tmp_path):
    path = write(tmp_path, "[models.m]\noutcome = { correct = 0.7, wrong = 0.2 }\n")
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    assert str(caught.value) == f"{path}: models.m.outcome: probabilities sum to 0.9, not 1"


def test_other_scenario_errors(tmp_path):
    cases = {
        "[[rules]]\nmatch = '('\nanswer = 'x'\n": "rules[0].match: bad regex",
        "[[rules]]\nmatch = 'x'\n": "rules[0].answer: missing",
        "[defaults]\nlatency_ms = [5, 1]\n": "defaults.latency_ms: min is above max",
        '[models.m]\nerror_rate = { "429" = 0.7, "500" = 0.6 }\n': (
            "models.m.error_rate: probabilities sum to 1.3, more than 1"
        ),
        "[models.m]\nrpm = -1\n": "models.m.rpm: must be a non-negative integer",
        "[defaults]\noutcome = { correct = 1.0 }\n": "defaults.outcome: unknown key",
        "seed = [": "",
    }
    for text, expected in cases.items():
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as caught:
            load_scenario(path)
        assert str(caught.value).startswith(f"{path}: {expected}")
    with pytest.raises(ConfigError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")


# --- the demo scenario ------------------------------------------------------------------------


def test_example_scenario_triages_realistic_tickets():
    demo = load_scenario(EXAMPLE)
    expected = {
        "Subject: Charged twice\n\nI was charged twice for my March plan, please refund one.": ("billing", "high"),
        "Subject: Invoice copy\n\nCould you send me the invoice for order 1182?": ("billing", "medium"),
        "Subject: App keeps crashing\n\nThe iOS app crashes whenever I open settings.": ("technical", "medium"),
        "Subject: URGENT\n\nOur whole site is down, checkout is down for all users!": ("technical", "high"),
        "Subject: Can't sign in\n\nThe password reset link never arrives.": ("account", "medium"),
        "Subject: Hacked?\n\nSomeone logged in to my account from another country.": ("account", "high"),
        "Subject: Where is my package?\n\nTracking hasn't updated in a week.": ("shipping", "medium"),
        "Subject: Need it today\n\nUrgent: the delivery for my wedding has not come.": ("shipping", "high"),
        "Subject: Idea\n\nIt would be great to have a dark mode.": ("other", "low"),
    }
    for ticket, (category, priority) in expected.items():
        answer = json.loads(demo.rule_for(ticket).answer)
        assert (answer["category"], answer["priority"]) == (category, priority), ticket
        for wrong in demo.rule_for(ticket).wrong:
            assert json.loads(wrong) != answer

    tiers = (("gpt-4o-mini", 0.70, 0.85), ("claude-haiku-4-5", 0.88, 0.97), ("claude-sonnet-4-6", 0.97, 1.0))
    for model, low, high in tiers:
        outcomes = Counter(demo.outcome(model, f"Subject: ticket {i}\n\nabout my bill {i}") for i in range(2000))
        assert low <= outcomes["correct"] / 2000 <= high, (model, outcomes)
    cheap = demo.profile("gpt-4o-mini")
    assert dict(cheap.error_rate)["429"] == 0.01 and dict(cheap.error_rate)["500"] == 0.01
    assert 50 <= cheap.latency_ms[0] and cheap.latency_ms[1] <= 150


def test_control_switches_an_outage_a_429_storm_and_a_required_key_on_and_off(scenario):
    import openai

    with SimServer(scenario) as sim:
        client = openai.OpenAI(api_key="k1", base_url=sim.url + "/v1", max_retries=0)

        def ask():
            return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                                  max_completion_tokens=8)

        def control(**body):
            return httpx2.post(sim.url + "/control", json=body).json()

        assert control(mode="500") == {"mode": "500", "retry_after_s": 1.0, "key_required": False,
                                       "batch_delay_s": 1.0, "batch_error_rate": 0.0, "batch_expire_next": 0}
        with pytest.raises(openai.InternalServerError):
            ask()
        control(mode="429", retry_after_s=3)
        with pytest.raises(openai.RateLimitError) as caught:
            ask()
        assert caught.value.response.headers["retry-after"] == "3"
        control(mode="ok", api_key="k2")
        with pytest.raises(openai.AuthenticationError, match="Incorrect API key provided"):
            ask()
        control(api_key=None)
        assert ask().choices[0].message.content
        stats = sim.stats()["models"]["gpt-4o-mini"]
        assert (stats["outage_500"], stats["rate_limited_429"], stats["auth_401"], stats["ok"]) == (1, 1, 1, 1)
        assert httpx2.post(sim.url + "/control", json={"mode": "down"}).status_code == 400
