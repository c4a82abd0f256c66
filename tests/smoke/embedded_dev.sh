#!/usr/bin/env bash
# End-to-end smoke run of the embedded path, as a new user would do it: with no DATABASE_URL / REDIS_URL,
# `just dev` starts embedded Postgres and Redis, migrates, serves; we create demo data, post one WPPConnect
# webhook with curl, log in, read the message back, then stop with SIGTERM and expect a clean exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
unset DATABASE_URL REDIS_URL

state=$(mktemp -d)
port=${SMOKE_PORT:-3091}
base="http://127.0.0.1:${port}"
export DEV_STATE_DIR="$state" PORT="$port" LOG_FORMAT=console

fail() { echo "smoke: FAILED: $*" >&2; echo "--- dev log ---" >&2; tail -n 60 "$state/dev.log" >&2 || true; exit 1; }

setsid just dev >"$state/dev.log" 2>&1 &
dev_pid=$!
cleanup() {
  if kill -0 "$dev_pid" 2>/dev/null; then kill -TERM -- "-$dev_pid" 2>/dev/null || true; wait "$dev_pid" || true; fi
  sleep 1  # let a server that was still stopping finish before its directory goes
  rm -rf "$state"
}
trap cleanup EXIT

for _ in $(seq 1 120); do
  curl -fsS "$base/ready" >/dev/null 2>&1 && break
  kill -0 "$dev_pid" 2>/dev/null || fail "just dev exited early"
  sleep 0.5
done
curl -fsS "$base/ready" >/dev/null || fail "API not ready after 60 s"
grep -q "postgres: embedded" "$state/dev.log" || fail "Postgres was not embedded"
grep -q "redis: embedded" "$state/dev.log" || fail "Redis was not embedded"
echo "smoke: just dev is up with embedded Postgres and Redis"

# demo-data attaches to the servers of the running dev run (same state dir)
demo=$(uv run python -m app.lib.embedded exec --state-dir "$state" -- uv run app demo-data 2>/dev/null)
read -r email password instance secret < <(python3 -c '
import json, sys
d = json.loads(sys.argv[1])
w = next(i for i in d["instances"] if i["gateway"] == "wppconnect")
print(d["login"]["email"], d["login"]["password"], w["name"], w["webhook_secret"])' "$demo")

msg_id="false_5511987650000@c.us_3EB0SMOKE$(date +%s)"
body=$(printf '{"event":"onmessage","session":"%s","id":"%s","from":"5511987650000@c.us","to":"5511900000000@c.us","body":"smoke test message","type":"chat","t":%s,"notifyName":"Smoke","fromMe":false,"isGroupMsg":false}' "$instance" "$msg_id" "$(date +%s)")
status=$(curl -sS -o "$state/ack.json" -w '%{http_code}' -X POST "$base/api/webhooks/wppconnect/$instance" \
  -H 'content-type: application/json' -H "x-webhook-secret: $secret" -d "$body")
[ "$status" = 200 ] || fail "webhook answered $status: $(cat "$state/ack.json")"
echo "smoke: webhook acknowledged: $(cat "$state/ack.json")"

token=$(curl -fsS -X POST "$base/api/auth/login" -H 'content-type: application/json' \
  -d "{\"email\":\"$email\",\"password\":\"$password\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
conversation=$(curl -fsS "$base/api/whatsapp-optimized/conversations" -H "Authorization: Bearer $token" |
  python3 -c 'import json,sys; print(next(c["id"] for c in json.load(sys.stdin)["items"] if c["contact"]["wa_id"] == "5511987650000"))') \
  || fail "conversation not listed"
curl -fsS "$base/api/whatsapp-optimized/messages/$conversation" -H "Authorization: Bearer $token" |
  python3 -c 'import json,sys; items = json.load(sys.stdin)["items"]; assert [m["body"] for m in items] == ["smoke test message"], items' \
  || fail "message not read back"
echo "smoke: message read back through the API"

# SIGTERM to `just` alone, as a process manager would send it: it must reach the API, the worker and the
# embedded servers, which all stop.
pg_port=$(sed -n 's/^postgres: embedded .*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$state/dev.log")
redis_port=$(sed -n 's/^redis: embedded .*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$state/dev.log")
kill -TERM "$dev_pid"
for _ in $(seq 1 40); do kill -0 "$dev_pid" 2>/dev/null || break; sleep 0.5; done
kill -0 "$dev_pid" 2>/dev/null && fail "just dev did not stop within 20 s of SIGTERM"
wait "$dev_pid" && code=0 || code=$?
echo "smoke: just dev stopped (exit $code)"
for port in "$port" "$pg_port" "$redis_port"; do
  for _ in $(seq 1 20); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break; sleep 0.5; done
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && fail "port $port still answers after the dev run stopped"
done
grep -q "Application shutdown complete" "$state/dev.log" || fail "uvicorn did not shut down gracefully"
echo "smoke: OK"
