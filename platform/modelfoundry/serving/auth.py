"""API keys for the Serve ingress. Keys come from an environment variable or a file (one per
line), never from YAML; requests carry `Authorization: Bearer <key>` or `X-API-Key: <key>`;
comparison is constant-time. No key: 401. Wrong key: 403."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from modelfoundry.serving.requests import RequestError


def load_keys(env_var: str | None, file: str | None) -> list[bytes]:
    keys: list[str] = []
    if env_var:
        value = os.environ.get(env_var)
        if not value:
            raise ValueError(f"api_keys_env names {env_var!r}, which is not set in the replica's environment")
        keys += value.split(",")
    if file:
        p = Path(file)
        if not p.is_file():
            raise ValueError(f"api_keys_file {file!r} does not exist")
        keys += p.read_text().splitlines()
    keys = [k.strip() for k in keys if k.strip()]
    if (env_var or file) and not keys:
        raise ValueError("API keys are configured but none were found")
    return [k.encode() for k in keys]


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, has_keys: bool, insecure: bool) -> None:
    """Serve HTTP is not covered by Ray's token auth: off loopback, API keys are the only gate."""
    if is_loopback(host) or has_keys or insecure:
        return
    raise ValueError(
        f"--host {host} exposes the model beyond this machine with no API keys: anyone who reaches it can call "
        "it. Set keys with --api-keys-env NAME (an env var holding comma-separated keys) or --api-keys-file PATH "
        "(api_keys_env / api_keys_file in a serve YAML's args), or pass --insecure to serve without them"
    )


def presented_key(headers) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key")


def check(keys: list[bytes], headers) -> None:
    """Raise 401/403 unless no keys are configured or the request carries one of them."""
    if not keys:
        return
    key = presented_key(headers)
    if not key:
        raise RequestError(401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    given = key.encode()
    if not any(hmac.compare_digest(given, k) for k in keys):  # every key compared, in constant time
        raise RequestError(403, "API key not accepted")
