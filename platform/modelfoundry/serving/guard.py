"""What a browser or a hostile client can do to the ingress before any verb runs: the checks on
the request line and headers, each a RequestError (4xx with a JSON error) when it fails.

- Host: without API keys the service trusts whoever reaches it, which on loopback is this
  machine's users, and also any web page one of them visits (DNS rebinding: a page whose name
  resolves to 127.0.0.1 is same-origin with the service). A Host header that is not a loopback
  address, `localhost` or a configured name is answered 421 (Misdirected Request). With keys the
  key is the gate (a rebinding page does not have it); `allowed_hosts`, when set, applies anyway.
- Content-Type: a cross-site page can send a "simple" POST (text/plain, form encodings) without a
  CORS preflight. Each verb takes only the media types it documents (JSON verbs application/json;
  image models also image/png; OIP v2 also application/octet-stream for its binary extension);
  anything else is 415, before the body is read. No CORS headers are ever sent, so a page on
  another origin cannot read an answer either.
- Numeric headers: a plain ASCII decimal within bounds, else 400 (requests.header_int).
"""

from __future__ import annotations

import re

from modelfoundry.serving.auth import is_loopback
from modelfoundry.serving.requests import RequestError

HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]{1,253})(:[0-9]{1,5})?$")
JSON = "application/json"
PNG = "image/png"
OCTET = "application/octet-stream"


def host_name(host: str) -> str | None:
    """The name part of a Host header ('[::1]:8000' -> '::1'), None when it is not one."""
    m = HOST_RE.match(host.strip())
    if not m:
        return None
    name = m.group(1)
    return name[1:-1] if name.startswith("[") else name.rstrip(".").lower()


def check_host(headers, allowed_hosts: tuple[str, ...] | None, has_keys: bool) -> None:
    if allowed_hosts is None and has_keys:
        return
    allowed = allowed_hosts or ()
    if "*" in allowed:
        return
    raw = headers.get("host", "")
    name = host_name(raw)
    if name is not None and (is_loopback(name) or name in allowed):
        return
    raise RequestError(
        421,
        f"Host {raw[:100]!r} is not served here: this service answers loopback names"
        + (f" and {list(allowed)}" if allowed else "")
        + " (serve with --allowed-host NAME, or allowed_hosts in the app's args, to add a name)",
    )


def media_type(headers) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def check_content_type(headers, accepted: tuple[str, ...], what: str) -> str:
    """The request's media type when it is one of `accepted`, else 415 naming them."""
    got = media_type(headers)
    if got not in accepted:
        raise RequestError(
            415,
            f"{what} takes Content-Type {' or '.join(accepted)}; got {got or 'none'!r}",
        )
    return got
