"""A server-like process for the shared-budget test: escalations to "Claude" against one ledger.

Usage: ``python budget_worker.py LOCATION NAME ESCALATIONS BUDGET COST TTL HOLD [hang]``. Each
escalation runs in a thread of its own with a ledger of its own (its own connection, as separate
servers have): it reserves ``COST`` of the daily ``BUDGET`` through :class:`BudgetGuard`, holds it
for ``HOLD`` seconds (the call in flight), then settles it with the call's row. With ``hang`` the
first escalation never settles: it waits, holding its reservation, to be killed.

It prints ``ready`` once its ledgers are open and starts when a line arrives on stdin, so that every
process starts at once. Each outcome is printed, flushed, only once it happened: ``reserved ID
EXPIRES``, ``committed TASK`` after the settle returned, ``refused``, ``holding ID EXPIRES``.
"""

from __future__ import annotations

import sys
import threading
import time

from caelum_mcp.core.errors import BudgetExceededError
from caelum_mcp.core.types import Usage
from caelum_mcp.engine.ledger import BudgetGuard, Ledger, model_call_row

_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def escalation(ledger: Ledger, guard: BudgetGuard, task: str, cost: float, ttl: float, hold: float) -> None:
    try:
        reservation = guard.reserve(cost, ttl_s=ttl)
    except BudgetExceededError:
        say("refused")
        return
    say(f"reserved {reservation.id} {reservation.expires}")
    time.sleep(hold)
    row = model_call_row(
        task=task, path="claude", provider="anthropic", host="claude", model="claude-sonnet-4-5", tier=None,
        usage=Usage(input_tokens=100, output_tokens=20), latency_ms=hold * 1000, cost=cost, counterfactual=cost,
    )  # fmt: skip
    ledger.settle(reservation, row)
    say(f"committed {task}")


def main(argv: list[str]) -> None:
    location, name, count, budget, cost, ttl, hold = argv[:7]
    hang = argv[7:] == ["hang"]
    ledgers = [Ledger(location) for _ in range(int(count))]
    if hang:  # a call in flight when the process dies
        held = BudgetGuard(ledgers[0], float(budget)).reserve(float(cost), ttl_s=float(ttl))
        say(f"reserved {held.id} {held.expires}")
        say(f"holding {held.id} {held.expires}")
    say("ready")
    sys.stdin.readline()
    threads = [
        threading.Thread(
            target=escalation,
            args=(ledger, BudgetGuard(ledger, float(budget)), f"{name}-{i}", float(cost), float(ttl), float(hold)),
            daemon=True,
        )
        for i, ledger in enumerate(ledgers)
        if not (hang and i == 0)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ledger in ledgers:
        ledger.close()
    say("done")


if __name__ == "__main__":
    main(sys.argv[1:])
