"""What a record may hold: model names, tags and token counts made storable.

Run on the writer thread, never on the hot path. Nothing here raises: a value that cannot
be stored as given is replaced (model text), described (a tag's type name) or dropped
(a token count), and the caller counts it, so a bad value from user code never stops the
records around it and never reaches the database to be refused there.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from typing import Any

MAX_MODEL_CHARS = 256
# The largest token count stored. Columns are 64-bit, but rollups sum counts: with at most
# 2^40 per call (a trillion tokens, far beyond any real call) 8 million calls of one hour
# and group still sum below 2^63. Larger values are not token counts: NULL, counted.
MAX_TOKENS = 2**40 - 1
MAX_TAG_DEPTH = 8


def clean_model(model: str) -> str:
    """``model`` as storable text: valid UTF-8, no NUL, at most ``MAX_MODEL_CHARS``.

    Returns ``model`` itself when it is fine (the common case: one length check and one
    encode); lone surrogates become ``\\udxxx`` escapes and NULs are removed.
    """
    if len(model) <= MAX_MODEL_CHARS and "\x00" not in model:
        try:
            model.encode("utf-8")
            return model
        except UnicodeEncodeError:
            pass
    text = model.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "")
    return text[:MAX_MODEL_CHARS] or "(invalid model name)"


def clean_tokens(value: Any) -> int | None:
    """A token count as an int in [0, 2^40), or None when it is not one.

    Integers (Python's and numpy's) and integral floats are counts; anything else
    (negative, NaN, inf, text, bool) is not.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        count = operator.index(value)
    except TypeError:
        if not isinstance(value, float) or not math.isfinite(value) or not value.is_integer():
            return None
        count = int(value)
    return count if 0 <= count <= MAX_TOKENS else None


def tags_json(tags: dict) -> tuple[str, int]:
    """``tags`` as a JSON object, and how many keys or values had to be replaced.

    Plain JSON values are kept; a value of another type becomes its ``str()``; one whose
    ``str()`` raises, a cycle, nesting deeper than ``MAX_TAG_DEPTH`` or a non-finite
    float becomes ``"<TypeName>"``; keys become text. The output is always ASCII.
    """
    try:
        return json.dumps(tags, default=str, sort_keys=True, allow_nan=False), 0
    except Exception:  # mixed key types, a cycle, NaN, a __str__ that raises, ...
        pass
    replaced = [0]
    clean = _clean_value(tags, replaced, set(), 0)
    return json.dumps(clean, sort_keys=True, allow_nan=False), replaced[0]


_PLAIN = (str, int, bool, type(None))


def tags_object(tags: dict) -> tuple[dict, int]:
    """``tags`` as a dict that ``json.dumps(..., allow_nan=False)`` accepts, and how many
    keys or values had to be replaced: the same cleaning as ``tags_json`` (what it
    would write is what this dict encodes to). Flat tags of plain JSON values (the
    common case) are returned as they are, without a copy."""
    if all(
        k.__class__ is str and (v.__class__ in _PLAIN or v.__class__ is float and math.isfinite(v))
        for k, v in tags.items()
    ):
        return tags, 0
    text, replaced = tags_json(tags)
    return json.loads(text), replaced


def _clean_value(value: Any, replaced: list[int], seen: set[int], depth: int) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        replaced[0] += 1
        return f"<{value}>"
    if isinstance(value, (dict, list, tuple)):
        if id(value) in seen or depth >= MAX_TAG_DEPTH:
            replaced[0] += 1
            return f"<{type(value).__name__}>"
        seen.add(id(value))
        try:
            if isinstance(value, dict):
                out: dict[str, Any] = {}
                for key, item in list(value.items()):
                    name = key if isinstance(key, str) else _key_text(key, replaced)
                    out[name] = _clean_value(item, replaced, seen, depth + 1)
                return out
            return [_clean_value(item, replaced, seen, depth + 1) for item in value]
        finally:
            seen.discard(id(value))
    try:
        return str(value)
    except Exception:
        replaced[0] += 1
        return f"<{type(value).__name__}>"


def _key_text(key: Any, replaced: list[int]) -> str:
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key) if not isinstance(key, float) or math.isfinite(key) else str(key)
    try:
        return str(key)
    except Exception:
        replaced[0] += 1
        return f"<{type(key).__name__}>"


class Cleaner:
    """The values of records made storable, with caches for what repeats (a decorator's
    tags, a model name) and a callback ``on_replaced(kind, count)`` for each value that
    had to be replaced (kinds: ``invalid_tokens``, ``sanitized_models``,
    ``unserializable_tags``). One per runtime; used on its writer or sender thread."""

    CACHE_SIZE = 4096

    def __init__(self, on_replaced: Callable[[str, int], None]) -> None:
        self._on_replaced = on_replaced
        self._models: dict[str, str] = {}
        self._tags: dict[int, tuple[dict, Any]] = {}

    def model(self, model: Any) -> str:
        text = self._models.get(model) if model.__class__ is str else None
        if text is None:
            text = clean_model(model if isinstance(model, str) else str(model))
            if text != model:
                self._on_replaced("sanitized_models", 1)
            if len(self._models) >= self.CACHE_SIZE:
                self._models.clear()
            if model.__class__ is str:
                self._models[model] = text
        return text

    def tokens(self, value: Any) -> int | None:
        if value is None or value.__class__ is int and 0 <= value <= MAX_TOKENS:
            return value
        count = clean_tokens(value)
        if count is None:
            self._on_replaced("invalid_tokens", 1)
        return count

    def tags_json(self, tags: dict) -> str:
        """Tags as JSON text (what the store keeps)."""
        return self._cached_tags(tags, tags_json, "{}")

    def tags_object(self, tags: dict) -> dict:
        """Tags as a JSON-safe dict (what the daemon is sent)."""
        return self._cached_tags(tags, tags_object, {})

    def _cached_tags(self, tags: dict, clean: Callable[[dict], tuple[Any, int]], empty: Any):
        if not tags:
            return empty
        cached = self._tags.get(id(tags))
        if cached is not None and cached[0] is tags:
            return cached[1]
        value, replaced = clean(tags)
        if replaced:
            self._on_replaced("unserializable_tags", replaced)
        if len(self._tags) >= self.CACHE_SIZE:
            self._tags.clear()
        self._tags[id(tags)] = (tags, value)
        return value
