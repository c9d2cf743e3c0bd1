"""The router: runs an LLM task local-first and escalates only when the answer is weak.

An :class:`~caelum_mcp.core.llm.LLMTask` says what it needs (:class:`~caelum_mcp.core.llm.TaskNeeds`: the
smallest tier that can do it, an output cap, a time budget). The router:

1. checks what can run it: local models of the needed tier or larger, and Claude (allowed by the
   task, enabled, configured, priced, under the daily budget). If neither, it raises
   :class:`~caelum_mcp.core.errors.TaskSkippedError` at once, saying why and what to configure: a step
   no available model can do well costs nothing;
2. plans a *ladder of targets* (:mod:`caelum_mcp.engine.router.plan`): the smallest eligible local tier
   (a code model first when the task prefers one), the next larger eligible tiers
   (``router.escalate_local``), then Claude;
3. walks it (:class:`Router`): each target is asked (:mod:`caelum_mcp.engine.router.targets`: a local
   tier through the pool, asking for JSON that matches the schema plus a ``confidence`` field,
   with logprobs; Claude under a budget reservation), its answer parsed, repaired at most once and
   scored by the gate (:mod:`caelum_mcp.engine.router.gate`: the task's grounding check, the raw signals
   mapped to the calibrated probability that the answer is right for that model and task kind,
   with ``agreement_samples`` more samples where that is uncertain), and the target says whether
   the answer stands: a local one when it clears the threshold (the best local answer is kept), a
   Claude one unless it does not parse where a local one did. Fallback and escalation are the order
   of the ladder, nothing more;
4. when no answer stands, returns the best local answer marked ``local_low_confidence`` with the
   reason the last target gave.

The whole run is bounded by the task's time budget, the one notion of time left: every pool call
gets the run's deadline (so queueing, failover and retries stop there) and a Claude call the time
that is left. When it runs out, the best answer so far comes back marked with the reason, or
:class:`~caelum_mcp.core.errors.TaskTimedOutError` when there is none.

A Claude call first reserves what it may cost (:func:`~caelum_mcp.engine.router.requests.cost_bound`: the
prompt at one token per UTF-8 byte, a bound that holds for any text, plus its whole output
allowance) against the daily budget, atomically in the ledger; the reservation becomes the call's
row when it ends (at its real usage), or is released when it fails, so concurrent escalations (in
one process or several sharing a data directory) cannot overspend the budget.

An output schema is checked before anything runs (:mod:`caelum_mcp.engine.answers`, which also finds and
validates the JSON in each reply): a schema that is not valid JSON schema, a ``$ref`` that points
nowhere or references that loop without end raise :class:`~caelum_mcp.core.errors.InvalidSchemaError`
naming the problem.

The output schema reaches each model once: a local model reads it in the system prompt (its server
also gets it as a grammar constraint, which costs no tokens); Claude gets it from the Anthropic
backend, as the API's structured-output parameter where the model supports it.

A task with ``on_text`` streams its local calls: the callback gets the text so far as it arrives,
the pool fails over only before the first token, and the ledger rows are the same as for a call
answered whole. A ``claude_only`` task skips the local pool.

Every prompt passes the secrets redaction (:mod:`caelum_mcp.core.redaction`) where it is sent
(:meth:`~caelum_mcp.engine.router.gate.Gate.ask`, the one place every chat request goes through): a key
read from a project's ``.env`` or a CSV cell never reaches a model, whichever tool built the
prompt. Texts to embed are not the router's: :mod:`caelum_mcp.engine.embedding_service` sends them, through
the same redaction.

Every model call is a ledger row (:mod:`caelum_mcp.engine.router.rows`), tagged with the tool call it was
made for; a failed call is one row per host that failed it, naming the host and how many attempts
it got there.
"""

from __future__ import annotations

from caelum_mcp.engine.router.core import Router
from caelum_mcp.engine.router.plan import TIER_SIZES
from caelum_mcp.engine.router.requests import cost_bound, redacted_request
from caelum_mcp.engine.router.targets import ClaudeTarget, LocalTarget, Target

# The name the tests use for the Claude cost bound.
_cost_bound = cost_bound

__all__ = ["TIER_SIZES", "ClaudeTarget", "LocalTarget", "Router", "Target", "redacted_request"]
