"""One HTTP POST as any client sends it, for tests that check status codes and bodies (no tritonclient in between)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Tuple


def post_json(url: str, body, timeout: float = 60) -> Tuple[int, str]:
    """(status, body text) of POSTing ``body`` as JSON to ``url``; an HTTP error status is returned, not raised."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
