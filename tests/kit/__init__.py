"""The one test kit tests and benchmarks import (issue 14 item 2: the support code had become a second
codebase, each helper written two to five times and benches importing each other's private names).

- processes: API processes (uvicorn / production entry point), the raw ASGI baseline, arq workers, a
  private Redis or Postgres that can be stopped and started on its port.
- clients: the raw WebSocket (asyncio protocol, and a blocking stalled one), the websockets-library client,
  the HTTP load client; api: what tests ask of the app with them (log in, send, post a text webhook, open
  a room and read its replay), in-process or of a running process; asgi_delivery: a POST into the ASGI
  app a chunk at a time, counting what it read.
- measure: RSS, CPU (process and machine), percentiles, a free port, the open-files limit.
- data: the settings builder and `env_for`, gateway events, webhook bodies; factories: polyfactory rows
  (tenants, conversations, messages) and the bench-scale SQL seed; ingested: conversations as
  IngestService writes them; databases: scratch databases.
- media: a file's reference and path on each gateway, the media worker's context, the files it stored;
  raw_http: a hand-written HTTP server (redirects, lying lengths, slow drips); page_cache: a counting
  loader and scopes for PageCache tests.
- raw_asgi, ws_relay, tcp_relay: the baseline servers and the fault-injecting TCP relay; runner: how a
  benchmark module runs.
- pgbouncer: a real pgbouncer in transaction mode in front of the test's Postgres (Supabase's pooler).

Tests and benches import the kit (and a suite's own support module), never a test module (issue 14 item
2: test modules had become each other's libraries, fixtures imported by name among them).
"""
