"""Who called: the tags a request gives its record (allowed headers, the OpenAI ``user``
field, a keyed hash of the API key), each chosen by the operator and never the raw secret.

Every value is client-chosen text: it is cut to ``MAX_TAG_CHARS`` and stripped of what is
not printable, so that a record holds a short, clean label whatever the client sends.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MAX_TAG_CHARS = 128
# The HMAC key when the deployment gives no secret: public, so a hash made with it only
# tells keys apart (it is not secret); a per-deployment secret also makes it unguessable.
DEFAULT_API_KEY_SALT = b"footprint-proxy-api-key-hash-v1"
API_KEY_HASH_HEX_DIGITS = 16
USER_TAG = "user"
API_KEY_HASH_TAG = "api_key_hash"


class TagHeader(NamedTuple):
    """A request header whose value is stored as a tag."""

    header: str
    tag: str


@dataclass(frozen=True)
class CallerTagging:
    """Which caller tags the proxy stores (the defaults: none)."""

    headers: tuple[TagHeader, ...] = ()
    user: bool = False  # the body's OpenAI ``user`` field, as tag ``user``
    api_key_hash: bool = False  # a keyed hash of ``Authorization: Bearer``, tag ``api_key_hash``
    api_key_secret: bytes | None = field(default=None, repr=False)  # None: the default salt

    @property
    def enabled(self) -> bool:
        return bool(self.headers) or self.user or self.api_key_hash

    @property
    def tag_names(self) -> tuple[str, ...]:
        names = [h.tag for h in self.headers]
        names += [USER_TAG] if self.user else []
        names += [API_KEY_HASH_TAG] if self.api_key_hash else []
        return tuple(names)


def clean(value: str) -> str:
    """``value`` without the characters that are not printable, trimmed and cut to
    ``MAX_TAG_CHARS``."""
    if not value.isprintable():
        value = "".join(c for c in value if c.isprintable())
    return value.strip()[:MAX_TAG_CHARS].strip()


def api_key_hash(authorization: str | None, secret: bytes | None) -> str | None:
    """The first 16 hex digits of HMAC-SHA256(secret, key) of ``Bearer <key>``; None
    without a bearer key."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    raw = key.encode("utf-8", "surrogateescape")  # the bytes the client sent
    digest = hmac.new(secret or DEFAULT_API_KEY_SALT, raw, hashlib.sha256).hexdigest()
    return digest[:API_KEY_HASH_HEX_DIGITS]


def caller_tags(tagging: CallerTagging, headers: Any, body: dict | None) -> dict[str, str]:
    """The caller tags of one request: ``headers`` (case-insensitive, as aiohttp's) and its
    parsed JSON body (None when unparsed). Empty values give no tag."""
    tags: dict[str, str] = {}
    for header, tag in tagging.headers:
        value = headers.get(header)
        if value is not None and (value := clean(value)):
            tags[tag] = value
    if tagging.user and body is not None:
        user = body.get("user")
        if isinstance(user, str) and (user := clean(user)):
            tags[USER_TAG] = user
    if tagging.api_key_hash:
        digest = api_key_hash(headers.get("Authorization"), tagging.api_key_secret)
        if digest is not None:
            tags[API_KEY_HASH_TAG] = digest
    return tags
