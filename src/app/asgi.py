"""ASGI entry point: `uvicorn app.asgi:app`. Settings are read from the environment at import."""

from app.server.core import create_asgi

app = create_asgi()
