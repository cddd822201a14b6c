"""`helm test`: one chat completion through the router's Service.

Asks /v1/models for the served model's name, sends a short greedy chat completion and
checks that the answer carries choices[0].message.content. Retries while the router or its
workers are still starting (connection refused, 503), up to TIMEOUT_S.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

BASE = os.environ["ROUTER_URL"].rstrip("/")
KEY = os.environ.get("TANDEM_API_KEY", "").split(",")[0].strip()
DEADLINE = time.monotonic() + float(os.environ.get("TIMEOUT_S", "600"))
RETRY_S = float(os.environ.get("RETRY_S", "5"))


def call(path, body=None):
    headers = {"Content-Type": "application/json"}
    if KEY:
        headers["Authorization"] = f"Bearer {KEY}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, headers=headers)
    while True:
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.load(response)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            status = getattr(e, "code", None)
            if status not in (None, 503) or time.monotonic() > DEADLINE:
                detail = e.read().decode(errors="replace") if hasattr(e, "read") else ""
                sys.exit(f"FAIL {path}: {e} {detail}")
            print(f"{path}: {e}; retrying", flush=True)
            time.sleep(RETRY_S)


model = call("/v1/models")["data"][0]["id"]
answer = call(
    "/v1/chat/completions",
    {
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
        "temperature": 0,
    },
)
content = answer["choices"][0]["message"]["content"]
if not isinstance(content, str):
    sys.exit(f"FAIL: choices[0].message.content is not text: {answer!r}")
print(f"OK {model}: {content!r}")
