"""The HTTP API (FastAPI).  Constants here are shared with clients without importing FastAPI."""

API_KEY_HEADER = "X-API-Key"
