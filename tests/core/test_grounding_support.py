"""Whether quotes can carry an answer: long enough, holding its commands, sharing its key terms."""

from __future__ import annotations

from caelum_mcp.engine.grounding import exact_terms, key_terms, quote_problem, restatement_problem, support_problem
from caelum_mcp.supervisors.knowledge.ask import check_answer
from caelum_mcp.tools.knowledge.store import StoredChunk

PASSAGE = 'def backoff_seconds(attempt):\n    """Exponential backoff: 1, 2, 4, 8 seconds, never more than 30."""'
DEPLOY = "To deploy, run: curl -fsSL https://deploy.example.invalid/x.sh | sudo sh"


def test_a_word_or_two_is_too_short_to_be_a_quote() -> None:
    assert quote_problem("run") is not None
    assert quote_problem("the retry") is not None
    assert quote_problem("a b c d") is not None  # four words, but 7 characters
    assert quote_problem("Exponential backoff: 1, 2, 4") is None


def test_commands_paths_and_urls_are_exact_terms_the_rest_key_terms() -> None:
    assert exact_terms(DEPLOY) == ["-fssl", "https://deploy.example.invalid/x.sh", "|"]
    assert key_terms("It waits 30 seconds, then the retry starts.") == ["waits", "30", "seconds", "retry", "starts"]


def test_an_answer_is_carried_only_by_quotes_that_hold_it() -> None:
    quote = "Exponential backoff: 1, 2, 4, 8 seconds, never more than 30."
    assert support_problem("The backoff is 1, 2, 4, 8 seconds, at most 30.", [quote], [PASSAGE]) is None
    # the command is in the passage cited, but not in the quote
    problem = support_problem(DEPLOY, ["To deploy the service, see below"], [DEPLOY])
    assert problem is not None and "which no quote holds" in problem
    assert support_problem(DEPLOY, [DEPLOY], [DEPLOY]) is None  # quoted word for word: the file does say so
    # long quote, but the answer is about something the cited passage never mentions
    problem = support_problem("Kubernetes helm charts configure the ingress controller.", [quote], [PASSAGE])
    assert problem is not None and "key terms" in problem
    # a long answer needs more than one short quote
    long_answer = "The backoff grows exponentially: " + ", ".join(str(2**i) for i in range(12)) + " seconds."
    problem = support_problem(long_answer, ["backoff: 1, 2, 4, 8 s"], [PASSAGE])
    assert problem is not None and "quotes" in problem


def test_backticks_and_the_cited_files_name_need_no_quote() -> None:
    quote = "Exponential backoff: 1, 2, 4, 8 seconds, never more than 30."
    answer = "In `service/retry.py`, `backoff_seconds` gives 1, 2, 4, 8 seconds, never more than 30."
    assert exact_terms(answer) == ["service/retry.py"]
    assert support_problem(answer, [quote], [PASSAGE], sources=["service/retry.py"]) is None
    assert support_problem(answer, [quote], [PASSAGE]) is not None  # another file's path is not the source


def test_an_answer_that_only_says_the_question_back_does_not_answer_it() -> None:
    question = "How long does the exponential backoff wait at most?"
    assert restatement_problem("the exponential backoff", question) == "only repeats words of the question"
    assert restatement_problem("Backoffs", question) is not None  # compared by stem
    assert restatement_problem("30 seconds", question) is None  # says what was asked for
    assert restatement_problem("", question) is None and restatement_problem("at the", question) is None


def test_ask_keeps_an_echoing_answers_citations_at_half_the_grounding() -> None:
    chunk = StoredChunk(id=1, path="service/retry.py", start_line=1, end_line=2, symbol="", kind="code", text=PASSAGE)
    quote = "Exponential backoff: 1, 2, 4, 8 seconds, never more than 30."
    cite = [{"passage": 1, "quote": quote}]
    question = "What does backoff_seconds compute?"
    answering = check_answer(
        {"answer": "Exponential backoff: 1, 2, 4, 8 seconds, never more than 30.", "citations": cite}, [chunk], question
    )
    assert answering.score == 1.0 and not answering.problems
    echo = check_answer({"answer": "backoff_seconds", "citations": cite}, [chunk], question)
    assert echo.score == 0.5 and echo.valid == (0,) and "only repeats words of the question" in echo.problems[0]
