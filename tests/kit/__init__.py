"""The one test kit tests and benchmarks import (issue 14 item 2: the support code had become a second
codebase, each helper written two to five times and benches importing each other's private names).

- processes: API processes (uvicorn / production entry point), the raw ASGI baseline, arq workers, a
  private Redis or Postgres that can be stopped and started on its port.
- clients: the raw WebSocket (asyncio protocol, and a blocking stalled one), the websockets-library client,
  the HTTP load client, login and a few requests tests make of a running process.
- measure: RSS, CPU (process and machine), percentiles, a free port, the open-files limit.
- data: the settings builder and `env_for`, gateway events, webhook bodies; factories: polyfactory rows
  (tenants, conversations, messages) and the bench-scale SQL seed; databases: scratch databases.
- raw_asgi, ws_relay, tcp_relay: the baseline servers and the fault-injecting TCP relay; runner: how a
  benchmark module runs.
- pgbouncer: a real pgbouncer in transaction mode in front of the test's Postgres (Supabase's pooler).
"""
