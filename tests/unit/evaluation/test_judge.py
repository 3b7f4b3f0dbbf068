"""The pairwise judge: verdict parsing, both-orders scoring, the interval, and the endpoint judge over loopback HTTP."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from common.errors import InvalidArgument, Unavailable
from evaluation.judge import EndpointJudge, Judge, JudgeSettings, judge_pair, parse_verdict, select_rows

SETTINGS = JudgeSettings(endpoint="http://127.0.0.1:1/v1", endpoint_model="unused")


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("1", "first"),
        ("2", "second"),
        ("tie", "tie"),
        ("TIE", "tie"),
        (" Tie, both are fine", "tie"),
        ("Response 2 is better.", "second"),
        ("1.", "first"),
        ("**1**", "first"),
        ("2\n1", "second"),
        ("", "unparseable"),
        ("12", "unparseable"),
        ("tied", "unparseable"),
        ("Both are good", "unparseable"),
        ("3", "unparseable"),
    ],
)
def test_the_verdict_is_the_first_standalone_1_2_or_tie(text, verdict):
    assert parse_verdict(text) == verdict


class ScriptedJudge(Judge):
    """Answers each prompt from a script keyed by (instruction, which student's answer is shown first)."""

    def __init__(self, script: dict[tuple[str, str], str], answers: dict[str, str]):
        self.script = script
        self.answers = answers  # answer text -> "A" or "B"
        self.prompts: list[str] = []

    def complete(self, user_texts, *, max_new_tokens):
        outputs = []
        for text in user_texts:
            self.prompts.append(text)
            instruction = next(i for i, _ in self.script if f"### Instruction\n{i}\n" in text)
            shown = [answer for answer in self.answers if f"\n{answer}\n" in text]
            shown_first = min(shown, key=lambda answer: text.index(f"\n{answer}\n"))
            outputs.append(self.script[(instruction, self.answers[shown_first])])
        return outputs

    def describe(self):
        return {"kind": "scripted"}


ROWS = [
    {"instruction": "Row zero.", "input": "", "category": "writing"},  # A preferred in both orders: 1
    {"instruction": "Row one.", "input": "", "category": "writing"},  # B preferred in both orders: 0
    {"instruction": "Row two.", "input": "", "category": "coding"},  # tie in both orders: 0.5
    {"instruction": "Row three.", "input": "", "category": "coding"},  # always "1" (position bias): 0.5
    {"instruction": "Row four.", "input": "ctx", "category": "coding"},  # unparseable, then A: 0.75
]
ANSWERS_A = [f"alpha answer {i}" for i in range(len(ROWS))]
ANSWERS_B = [f"beta answer {i}" for i in range(len(ROWS))]
SCRIPT = {
    ("Row zero.", "A"): "1",
    ("Row zero.", "B"): "2",
    ("Row one.", "A"): "2",
    ("Row one.", "B"): "Response 1",
    ("Row two.", "A"): "tie",
    ("Row two.", "B"): "Tie.",
    ("Row three.", "A"): "1",
    ("Row three.", "B"): "1",
    ("Row four.", "A"): "hard to say",
    ("Row four.", "B"): "2",
}


def scripted_judge() -> ScriptedJudge:
    return ScriptedJudge(SCRIPT, {**{a: "A" for a in ANSWERS_A}, **{b: "B" for b in ANSWERS_B}})


def test_win_rate_counts_ties_and_order_flips_as_half_with_a_scripted_judge():
    judge = scripted_judge()
    result = judge_pair(ROWS, ANSWERS_A, ANSWERS_B, judge, SETTINGS)

    assert [r["score"] for r in result["rows"]] == [1.0, 0.0, 0.5, 0.5, 0.75]
    assert result["win_rate"] == pytest.approx(2.75 / 5, abs=1e-12)
    assert (result["n"], result["wins"], result["ties"], result["losses"]) == (5, 2, 2, 1)
    assert result["agreement"] == pytest.approx(3 / 5, abs=1e-12)  # rows 0-2 agree; the flip and row 4 do not
    assert result["unparseable"] == 1
    # decisive verdicts: 1,2 | 2,1 | 1,1 | 2 -> 4 of 7 chose the response shown first
    assert result["first_position_rate"] == pytest.approx(4 / 7, abs=1e-12)
    assert result["rows"][3]["verdict_a_first"] == "first" and result["rows"][3]["verdict_b_first"] == "first"
    assert result["rows"][4]["verdict_a_first"] == "unparseable"
    assert result["categories"] == {
        "coding": {"n": 3, "win_rate": pytest.approx(1.75 / 3, abs=1e-12), "wins": 1, "ties": 2, "losses": 0},
        "writing": {"n": 2, "win_rate": 0.5, "wins": 1, "ties": 0, "losses": 1},
    }
    # every instruction was asked in both orders, its input included
    assert len(judge.prompts) == 2 * len(ROWS)
    assert sum("Row four.\n\nctx" in prompt for prompt in judge.prompts) == 2


def test_the_interval_contains_the_win_rate_and_is_deterministic_with_a_scripted_judge():
    first = judge_pair(ROWS, ANSWERS_A, ANSWERS_B, scripted_judge(), SETTINGS)
    second = judge_pair(ROWS, ANSWERS_A, ANSWERS_B, scripted_judge(), SETTINGS)

    interval = first["interval"]
    assert 0.0 <= interval["ci_low"] <= first["win_rate"] <= interval["ci_high"] <= 1.0
    assert interval["ci_low"] < interval["ci_high"]  # the scores differ, so the interval has width
    assert interval["excludes_half"] is False
    assert (interval["confidence"], interval["resamples"]) == (0.95, 2000)
    assert first == second


def test_swapping_the_students_mirrors_the_win_rate_with_a_scripted_judge():
    forward = judge_pair(ROWS, ANSWERS_A, ANSWERS_B, scripted_judge(), SETTINGS)
    backward = judge_pair(ROWS, ANSWERS_B, ANSWERS_A, scripted_judge(), SETTINGS)  # the same judge, students swapped

    assert backward["win_rate"] == pytest.approx(1.0 - forward["win_rate"], abs=1e-12)
    assert (backward["wins"], backward["losses"]) == (forward["losses"], forward["wins"])


def test_rows_without_a_category_have_no_per_category_figures_with_a_scripted_judge():
    rows = [{k: v for k, v in row.items() if k != "category"} for row in ROWS]
    result = judge_pair(rows, ANSWERS_A, ANSWERS_B, scripted_judge(), SETTINGS, indices=[10, 11, 12, 13, 14])

    assert "categories" not in result
    assert [r["index"] for r in result["rows"]] == [10, 11, 12, 13, 14]


def test_mismatched_answer_counts_are_invalid():
    with pytest.raises(InvalidArgument, match="one answer per row"):
        judge_pair(ROWS, ANSWERS_A[:-1], ANSWERS_B, scripted_judge(), SETTINGS)


def test_rows_are_spread_over_the_file():
    rows = [{}] * 80
    assert select_rows(rows, 4) == [0, 20, 40, 60]
    assert select_rows(rows, None) == list(range(80))
    assert select_rows(rows, 500) == list(range(80))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({}, "model"),
        ({"model": "models/tiny-teacher", "endpoint": "http://127.0.0.1:8000/v1", "endpoint_model": "m"}, "endpoint"),
        ({"endpoint": "http://127.0.0.1:8000/v1"}, "endpoint_model"),
        ({"endpoint": "127.0.0.1:8000/v1", "endpoint_model": "m"}, "endpoint"),
        ({"model": "m", "max_rows": 0}, "max_rows"),
        ({"model": "m", "verdict_max_new_tokens": 0}, "verdict_max_new_tokens"),
    ],
)
def test_settings_need_exactly_one_judge_and_name_the_field(kwargs, field):
    with pytest.raises(InvalidArgument) as err:
        JudgeSettings(**kwargs)
    assert err.value.field == field


class _Completions(BaseHTTPRequestHandler):
    """An OpenAI-style /v1/chat/completions: records each request, answers from the server's script."""

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
        status, payload = self.server.reply
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def completions_server():
    server = HTTPServer(("127.0.0.1", 0), _Completions)
    server.requests, server.reply = (
        [],
        (200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "2"}}]}),
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_endpoint_judge_posts_an_openai_chat_completion_at_temperature_0(completions_server):
    base = f"http://127.0.0.1:{completions_server.server_port}/v1"
    judge = EndpointJudge(base + "/", "judge-model-name", api_key="sk-test")

    outputs = judge.complete(["Which is better?", "And now?"], max_new_tokens=8)

    assert outputs == ["2", "2"]
    assert [r["path"] for r in completions_server.requests] == ["/v1/chat/completions"] * 2
    first = completions_server.requests[0]
    assert first["body"] == {
        "model": "judge-model-name",
        "messages": [{"role": "user", "content": "Which is better?"}],
        "temperature": 0,
        "max_tokens": 8,
    }
    assert first["headers"]["Authorization"] == "Bearer sk-test"
    assert "sk-test" not in json.dumps(judge.describe())


def test_the_endpoint_judge_scores_both_orders(completions_server):
    base = f"http://127.0.0.1:{completions_server.server_port}/v1"
    result = judge_pair(ROWS[:2], ANSWERS_A[:2], ANSWERS_B[:2], EndpointJudge(base, "m"), SETTINGS)

    # always "2": B when A is first, A when B is first -> one half per row, orders disagree
    assert result["win_rate"] == 0.5 and result["agreement"] == 0.0
    assert "Authorization" not in completions_server.requests[0]["headers"]
    prompts = [r["body"]["messages"][0]["content"] for r in completions_server.requests]
    assert prompts[0].index(ANSWERS_A[0]) < prompts[0].index(ANSWERS_B[0])  # A first ...
    assert prompts[2].index(ANSWERS_B[0]) < prompts[2].index(ANSWERS_A[0])  # ... then B first


@pytest.mark.parametrize(
    "reply, error",
    [
        ((500, {"error": "overloaded"}), Unavailable),
        ((404, {"error": {"message": "model not found"}}), InvalidArgument),
        ((200, b"not json"), InvalidArgument),
        ((200, {"choices": []}), InvalidArgument),
    ],
)
def test_bad_endpoint_answers_name_the_endpoint(completions_server, reply, error):
    completions_server.reply = reply
    judge = EndpointJudge(f"http://127.0.0.1:{completions_server.server_port}/v1", "m")
    with pytest.raises(error) as err:
        judge.complete(["x"], max_new_tokens=4)
    assert err.value.field == "judge.endpoint"
    if reply[0] == 404:
        assert "model not found" in err.value.message


def test_a_refused_connection_is_unavailable_naming_the_endpoint():
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = EndpointJudge(f"http://127.0.0.1:{port}/v1", "m", timeout_s=5)
    with pytest.raises(Unavailable) as err:
        judge.complete(["x"], max_new_tokens=4)
    assert err.value.field == "judge.endpoint"
    assert f"127.0.0.1:{port}" in err.value.message
