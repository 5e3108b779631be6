"""How a stored model is named: `StoreVersion` (store, name, version: one value, parsed and printed
here only) and the references users type (NAME, NAME:VERSION, NAME@ALIAS)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelfoundry.storage import absolute, join

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"model name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")


def check_alias(alias: str) -> None:
    if not ALIAS_RE.match(alias) or alias == "latest":
        raise ValueError(
            f"alias {alias!r} must start with a letter and hold 1-32 letters, digits, '_' or '-' (not 'latest')"
        )


def parse_ref(ref: str) -> tuple[str, str]:
    """NAME, NAME:VERSION or NAME@ALIAS -> (name, VERSION, 'latest' or '@ALIAS'), as resolve takes them."""
    if "@" in ref:
        name, _, alias = ref.partition("@")
        return name, f"@{alias}"
    name, _, version = ref.partition(":")
    return name, version or "latest"


@dataclass(frozen=True, order=True)
class StoreVersion:
    """One published version: `<store>/<name>/<version>/`. `store` is absolute (a local path made
    absolute, or a URI such as s3://bucket/models), so the value means the same in every process."""

    store: str
    name: str
    version: int

    def __post_init__(self) -> None:
        check_name(self.name)
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise ValueError(f"a store version is a positive integer, got {self.version!r}")
        object.__setattr__(self, "store", absolute(self.store))

    @property
    def uri(self) -> str:
        """Where its files are (a directory or a URI prefix)."""
        return join(self.store, self.name, str(self.version))

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def __str__(self) -> str:
        return self.ref

    @classmethod
    def from_uri(cls, uri: str) -> StoreVersion:
        """The inverse of `.uri`: `<store>/<name>/<version>` (a trailing slash allowed)."""
        parts = uri.rstrip("/").rsplit("/", 2)
        if len(parts) != 3 or not parts[2].isdigit():
            raise ValueError(f"{uri!r} is not a model-store version (<store>/<name>/<version>)")
        return cls(parts[0], parts[1], int(parts[2]))
