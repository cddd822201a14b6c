"""The OpenAI-compatible router: HTTP at the edge (app.py), workers behind a Backend."""
