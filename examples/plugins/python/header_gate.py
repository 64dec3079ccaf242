"""header-gate: a Weft filter plugin in Python, built with componentize-py.

Lets a request through only when one header (default `x-tenant`) holds an allowed value;
anything else gets a local 403. The Python twin of examples/tenant-gate (Rust).

Config (JSON): {"header": "x-tenant", "allow": ["acme", "globex"]}
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import request
from wit_world.imports.types import Hooks, LocalResponse

# Built once: the reply is the same for every refused call.
DENIED = LocalResponse(
    status=403,
    headers=[("content-type", b"text/plain; charset=utf-8")],
    body=b"tenant not allowed\n",
)

KNOWN_FIELDS = {"header", "allow"}

# The parsed config, module-level on purpose: componentize-py may build a new `Filter`
# object for every export call, so attributes set in `configure` would not reach
# `on_request`. The host configures each pooled instance once, so a global is per-instance
# and holds nothing about any one call (which the contract forbids keeping).
header_name = "x-tenant"
allowed = frozenset()


def parse(config):
    """Returns (header, allowed values as bytes), or raises ValueError naming the problem."""
    try:
        doc = json.loads(config)
    except ValueError as e:
        raise ValueError(f"config is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError("config must be a JSON object")
    unknown = sorted(set(doc) - KNOWN_FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (known: allow, header)")

    header = doc.get("header", "x-tenant")
    if not isinstance(header, str) or not header:
        raise ValueError("header: expected a non-empty string")

    if "allow" not in doc:
        raise ValueError("allow: missing; name at least one allowed value")
    allow = doc["allow"]
    if not isinstance(allow, list) or not all(isinstance(v, str) for v in allow):
        raise ValueError("allow: expected a list of strings")
    if not allow:
        raise ValueError("allow: name at least one allowed value")

    # Header values arrive as raw bytes (maybe not UTF-8): compare bytes, never decode.
    return header.lower(), frozenset(v.encode() for v in allow)


class Filter(exports.Filter):
    def configure(self, config: str) -> Hooks:
        global header_name, allowed
        try:
            header_name, allowed = parse(config)
        except ValueError as e:
            # `Err` is how componentize-py returns the `result`'s error case.
            raise Err(str(e))
        # Only on-request: the host then never calls the other hooks, so they cost nothing.
        return Hooks.ON_REQUEST

    def on_request(self, call_id: int) -> None:
        # A missing header reads as None, which is never in `allowed`.
        if request.header(header_name) not in allowed:
            request.respond(DENIED)

    # Never called (not declared in `configure`), but the export needs every function.
    def on_attempt_end(self, attempt):
        raise NotImplementedError

    def on_response(self, call_id: int) -> None:
        raise NotImplementedError

    def on_done(self, summary) -> None:
        raise NotImplementedError
