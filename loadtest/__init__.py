"""Load generator and report writer for OpenAI-compatible endpoints (arrives with issue 4)."""
