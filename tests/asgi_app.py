"""A tiny ASGI app for observed-mode tests: `/` says who answered, `/sleep?s=N`
blocks the event loop synchronously, as a stuck library call would."""

import json
import os
import time
from urllib.parse import parse_qs


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/sleep":
        time.sleep(float(parse_qs(scope["query_string"].decode()).get("s", ["1"])[0]))
    body = json.dumps({"worker": int(os.environ.get("HERMES_WORKER_ID", "-1")),
                       "pid": os.getpid()}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
