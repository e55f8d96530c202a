"""JSON for the fake's files (state, call log, journal) without importing :mod:`json`.

``import json`` imports ``re``, and ``re`` ``enum``: about half of what a fake virsh
process imports, for every call.  CPython's ``_json`` accelerator, which ``json`` itself
calls, needs neither; ``json`` is imported only where ``_json`` is missing (another
interpreter) or its constructors take other arguments.  Same text as ``json.dumps``
(with *separators*), same values as ``json.loads``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms per call
if TYPE_CHECKING:
    from typing import Any, Callable, Optional


def _not_serializable(value: object) -> object:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def _constant(name: str) -> float:
    return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


class _Decoding:
    """What ``_json.make_scanner`` reads of a ``json.JSONDecoder``: its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_constant)


_WHITESPACE = " \t\n\r"
_SEPARATORS = ((", ", ": "), (",", ":"))

_scan: Optional[Callable[[str, int], tuple[Any, int]]] = None
_encoders: dict[tuple[str, str], Callable[[object, int], Any]] = {}
try:
    import _json

    _scan = _json.make_scanner(_Decoding())  # type: ignore[arg-type]
    for _separators in _SEPARATORS:
        _encoders[_separators] = _json.make_encoder(
            {}, _not_serializable, _json.encode_basestring_ascii, None, _separators[1],
            _separators[0], False, False, True)
except (ImportError, AttributeError, TypeError):  # pragma: no cover - not CPython
    _scan = None


def dumps(value: object, separators: tuple[str, str] = _SEPARATORS[0]) -> str:
    """``json.dumps(value, separators=separators)`` (the default ones, or compact)."""
    if _scan is None:  # pragma: no cover
        import json

        return json.dumps(value, separators=separators)
    return "".join(_encoders[separators](value, 0))


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``; *text* as bytes is UTF-8."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if _scan is not None:
        try:
            value, end = _scan(text, len(text) - len(text.lstrip(_WHITESPACE)))
        except StopIteration:
            pass
        else:
            if not text[end:].strip(_WHITESPACE):
                return value
    import json

    return json.loads(text)  # not CPython, or not JSON: the error json raises
