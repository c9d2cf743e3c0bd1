"""The engine: where LLM work runs and what it costs.

The config that builds it (:mod:`.config`); model servers as typed backend plug-ins
(:mod:`.backends`) behind hosts (:mod:`.hosts`) in a load-balanced, health-checked pool
(:mod:`.pool`); the router that walks a ladder of targets, local tiers then Claude under its budget
(:mod:`.router`), judging each answer through calibrated confidence (:mod:`.calibration`,
:mod:`.competence`, :mod:`.grounding`, :mod:`.answers`, :mod:`.audit`, :mod:`.refit`); embeddings as
their own service (:mod:`.embedding_service`); the cost ledger on SQLite or PostgreSQL
(:mod:`.ledger`); the result cache and token budgets (:mod:`.cache`, :mod:`.budget`); and the pool's
status report (:mod:`.status`). It imports the kernel (:mod:`caelum_mcp.core`), the embedded models
(:mod:`caelum_mcp.embedded`) and the plain tool helpers, never the serving layer.
"""
