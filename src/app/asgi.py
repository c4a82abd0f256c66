"""ASGI entry point: `uvicorn app.asgi:app`. Settings are read from the environment at import."""

from app.server.core import create_app

app = create_app()
