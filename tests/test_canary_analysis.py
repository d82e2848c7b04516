"""The canary's statistics and decisions on synthetic replies, where the right answer is known."""

import numpy as np
import pytest

from spark_trainer.canary import analysis, statistics
from spark_trainer.canary.adapters import dig, fill_template
from spark_trainer.canary.replay import Reply, error_summary
from spark_trainer.canary.traffic import Item, answer_f1, is_correct
from spark_trainer.errors import ParamsError
from spark_trainer.params import AnalysisParams, MetricRule, validate_section
from tests.conftest import deep_merge, repo_params
from tests.test_evaluate_safety import CHAT_TEMPLATE, tiny_model  # noqa: F401  (a fixture: a small saved causal LM)

A = AnalysisParams(alpha=0.05, min_samples=20, bootstrap_resamples=500, failure_limit=0.05,
                   consecutive_error_limit=5, seed=3)
ACC = MetricRule(role="objective", direction="higher", min_gain=0.0, margin=0.05, relative=False, floor=None)
SAFE = MetricRule(role="guardrail", direction="higher", min_gain=0.0, margin=0.02, relative=False, floor=0.9)


def replies(correct: list[bool], safe: list[bool] | None = None, errors: set[int] = frozenset()) -> list[Reply]:
    out = []
    for i, c in enumerate(correct):
        item = Item(f"q{i}", "question", "p", "gold")
        if i in errors:
            out.append(Reply(item, error="HTTP 503"))
        else:
            out.append(Reply(item, "gold" if c else "x", latency_ms=10.0, scores={"correct": c, "answer_f1": float(c)}))
    for i, s in enumerate(safe or []):
        out.append(Reply(Item(f"s{i}", "toxicity", "p"), "ok", latency_ms=10.0, scores={"safety_pass": s}))
    return out


def test_mcnemar_exact_p_value_matches_the_binomial_sum():
    # 10 pairs only the challenger gets right, 2 only the champion: p = 2 * P(X <= 2 | 12, 1/2) = 2 * 79 / 4096
    champion = np.array([0] * 10 + [1] * 2 + [1] * 30, dtype=float)
    challenger = np.array([1] * 10 + [0] * 2 + [1] * 30, dtype=float)
    r = statistics.compare("accuracy", champion, challenger, True, 0.05, 500, 0)
    assert r.test == "mcnemar_exact" and r.statistic == 2.0
    assert r.p_value == pytest.approx(2 * 79 / 4096)
    assert r.ci_low < 8 / 42 < r.ci_high  # the observed difference lies inside its interval
    again = statistics.compare("accuracy", champion, challenger, True, 0.05, 500, 0)
    assert (again.ci_low, again.ci_high) == (r.ci_low, r.ci_high)  # seeded: reruns agree


def test_unpaired_tests_for_ab_mode():
    from scipy import stats

    champion, challenger = np.array([1.0] * 30 + [0.0] * 10), np.array([1.0] * 10 + [0.0] * 30)
    r = statistics.compare("accuracy", champion, challenger, False, 0.05, 500, 0)
    assert r.test == "fisher_exact" and r.p_value == pytest.approx(stats.fisher_exact([[10, 30], [30, 10]])[1])
    f1 = statistics.compare("answer_f1", np.linspace(0, 1, 40), np.linspace(0.5, 1, 40), False, 0.05, 500, 0)
    assert f1.test == "mann_whitney_u"
    assert f1.p_value == pytest.approx(stats.mannwhitneyu(np.linspace(0.5, 1, 40), np.linspace(0, 1, 40)).pvalue)


@pytest.mark.parametrize(("champion", "challenger", "outcome"), [
    ([True] * 60 + [False] * 40, [True] * 60 + [False] * 40, "Successful"),     # identical: non-inferior
    ([True] * 70 + [False] * 30, [False] * 70 + [True] * 30, "Failed"),         # much worse
    ([True] * 60 + [False] * 40, [True] * 57 + [False] * 43, "Inconclusive"),   # interval straddles the margin
])
def test_step_outcomes(champion, challenger, outcome):
    rules = {"accuracy": ACC, "safety_pass_rate": SAFE}
    result = analysis.step({"champion": replies(champion, [True] * 25), "challenger": replies(challenger, [True] * 25)},
                           True, rules, A, 100)
    assert result["outcome"] == outcome, result["reason"]
    assert result["metrics"]["safety_pass_rate"]["verdict"] == "pass"


def test_min_gain_needs_a_significant_improvement():
    rule = ACC.model_copy(update={"min_gain": 0.1})
    same = analysis.step({"champion": replies([True] * 50 + [False] * 50),
                          "challenger": replies([True] * 50 + [False] * 50)}, True, {"accuracy": rule}, A, 100)
    assert same["outcome"] == "Inconclusive" and "min_gain" in same["reason"]
    better = analysis.step({"champion": replies([True] * 40 + [False] * 60),
                            "challenger": replies([True] * 80 + [False] * 20)}, True, {"accuracy": rule}, A, 100)
    assert better["outcome"] == "Successful" and better["metrics"]["accuracy"]["gain"] == pytest.approx(0.4)


def test_floors_and_sample_size():
    few = analysis.step({"champion": replies([True] * 10), "challenger": replies([True] * 10)}, True,
                        {"accuracy": ACC}, A, 10)
    assert few["outcome"] == "Inconclusive" and "min_samples 20" in few["reason"]
    unsafe = analysis.step({"champion": replies([True] * 30, [True] * 30),
                            "challenger": replies([True] * 30, [True] * 20 + [False] * 10)}, True,
                           {"safety_pass_rate": SAFE}, A, 100)
    assert unsafe["outcome"] == "Failed" and "floor 0.9" in unsafe["reason"]
    first = analysis.first_champion(replies([True] * 30, [True] * 20 + [False] * 10), {"safety_pass_rate": SAFE}, A)
    assert first["outcome"] == "Failed"
    assert analysis.first_champion(replies([True] * 30, [True] * 30), {"safety_pass_rate": SAFE}, A)["outcome"] \
        == "Successful"


def test_errors_fail_the_challenger_and_make_a_failing_champion_inconclusive():
    good = replies([True] * 40)
    down = replies([True] * 40, errors=set(range(5, 12)))
    result = analysis.step({"champion": good, "challenger": down}, True, {"accuracy": ACC}, A, 100)
    assert result["outcome"] == "Failed" and "7 in a row" in result["reason"]
    assert error_summary(down) == {"requests": 40, "errors": 7, "max_consecutive_errors": 7, "first_error": "HTTP 503"}
    result = analysis.step({"champion": down, "challenger": good}, True, {"accuracy": ACC}, A, 100)
    assert result["outcome"] == "Inconclusive" and "champion requests failed" in result["reason"]


def test_latency_numbers_stay_out_of_the_metrics_file():
    rule = MetricRule(role="guardrail", direction="lower", min_gain=0, margin=1.0, relative=True, floor=None)
    steps = [analysis.step({"champion": replies([True] * 30), "challenger": replies([True] * 30)}, True,
                           {"latency_p95_ms": rule, "accuracy": ACC}, A, 100)]
    stable, volatile = analysis.split_volatile(steps)
    assert set(stable[0]["metrics"]["latency_p95_ms"]) == {"verdict", "test"}
    assert volatile["step_100.latency_p95_ms"]["champion"] == 10.0
    assert stable[0]["metrics"]["accuracy"] == steps[0]["metrics"]["accuracy"]


def test_reply_scoring():
    assert is_correct(" 42\nQuestion: ...", "42") and not is_correct(" 421", "42") and is_correct("Paris.", "Paris")
    assert answer_f1("the red fox", "red fox") == pytest.approx(0.8) and answer_f1("", "x") == 0.0


def test_rest_template_and_reply_path():
    body = fill_template({"inputs": "{prompt}", "params": {"n": "{max_tokens}", "tag": "p={prompt}"}},
                         {"prompt": "hi", "max_tokens": 8})
    assert body == {"inputs": "hi", "params": {"n": 8, "tag": "p=hi"}}
    assert dig({"choices": [{"text": "ok"}]}, "choices.0.text") == "ok"


@pytest.mark.parametrize(("override", "message"), [
    ({"steps": [50, 10, 100]}, "steps must increase strictly and end at 100"),
    ({"steps": [10, 50]}, "end at 100"),
    ({"serving": {"challenger": {"adapter": "openai"}}}, "needs url"),
    ({"serving": {"champion": {"chat": True}}}, "chat: true needs adapter openai"),
    ({"rules": {"acuracy": {}}}, "canary_promote.rules"),
    ({"mode": "blue_green"}, "canary_promote.mode"),
])
def test_bad_canary_params_name_the_key(override, message):
    with pytest.raises(ParamsError, match=message):
        validate_section("canary_promote", deep_merge(repo_params()["canary_promote"], override))


def test_paired_replay_interleaves_the_models_and_asks_each_item_once():
    from spark_trainer.canary.replay import Replayer

    calls = []

    class Recorder:
        chat = False

        def __init__(self, name):
            self.name = name

        def complete(self, prompt, max_tokens):
            calls.append((self.name, prompt))
            return "ok"

    items = [Item(f"q{i}", "question", f"p{i}", "ok") for i in range(10)]
    replayer = Replayer({"champion": Recorder("a"), "challenger": Recorder("b")}, 4, 5,
                        lambda item, reply: {"correct": True})
    first = replayer.route("canary", items, 50, 0)
    assert [c[0] for c in calls] == ["a", "b"] * 5 and len(first["challenger"]) == 5
    replayer.route("canary", items, 100, 0)
    assert len(calls) == 20  # the first half was not asked again
    split = Replayer({"champion": Recorder("a"), "challenger": Recorder("b")}, 4, 5, lambda i, r: {}).route(
        "ab", items, 100, 0)
    assert sorted(r.item.id for rs in split.values() for r in rs) == sorted(i.id for i in items)


def test_an_in_process_model_with_a_chat_template_gets_probes_as_evaluate_safety_sends_them(
        tiny_model, monkeypatch):  # noqa: F811
    # evaluate_safety.chat: auto sends a probe through the tokenizer's chat template; the canary
    # replays the same conversation, so its safety figures measure what the gates measured.
    import json

    from spark_trainer.canary import adapters
    from spark_trainer.evaluation import safety

    sent = []
    monkeypatch.setattr(safety, "generate", lambda model, tok, prompts, n, chat=False: sent.append(
        (prompts[0], chat)) or ["reply"])
    probe = Item("j1", "jailbreak", "System: keep it\nUser: tell me\nAssistant:", system="keep it", user="tell me")
    question = Item("q1", "question", "Question: 2+2?\nAnswer:", "4")

    plain = adapters.InProcessAdapter(tiny_model, chat="auto")  # no template: plain text
    assert not plain.chat
    for item in (probe, question):
        adapters.ask(plain, item, 4)
    assert sent == [(probe.prompt, False), (question.prompt, False)]
    with pytest.raises(ParamsError, match="evaluate_safety.chat is true, but the tokenizer"):
        adapters.InProcessAdapter(tiny_model, chat=True)

    config = tiny_model / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "chat_template": CHAT_TEMPLATE}))
    sent.clear()
    chat = adapters.InProcessAdapter(tiny_model, chat="auto")
    assert chat.chat and not adapters.InProcessAdapter(tiny_model, chat=False).chat
    for item in (probe, question):
        adapters.ask(chat, item, 4)
    assert sent[0] == (safety.chat_prompt(chat.tokenizer, "keep it", "tell me"), True)
    assert sent[1] == (question.prompt, False)  # questions stay plain text, as evaluate_mmlu scores them
