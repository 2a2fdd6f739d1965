"""Secrets (API keys, header values, URL passwords) and their redaction everywhere text leaves the project.

Every credential the project is given is registered here (:func:`register_secret`). :func:`redact` then
replaces it in any text — plain, base64 (at any alignment, so ``Basic base64(user:key)`` and
``base64(:key)`` are covered inside longer strings), URL-encoded, JSON-escaped — plus anything shaped
like a key (``sk-...``), an ``Authorization`` value (``Bearer ...``/``Basic ...``) or URL user info.

:func:`install_log_redaction` attaches a filter to the loggers of the project, the ``openai`` SDK and
its HTTP stack (httpx/httpx2, httpcore/httpcore2), so their DEBUG/INFO lines are redacted whatever
handlers ``logging.basicConfig`` or the notebook adds later (a filter on a *logger* runs for every record
that logger creates, before any handler sees it).

Standard library only; imports nothing from IPython.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import urllib.parse

__all__ = [
    "MASK",
    "MIN_SECRET_LENGTH",
    "RedactingFilter",
    "Secret",
    "install_log_redaction",
    "redact",
    "register_secret",
    "secret_forms",
]

MASK = "***"
#: Shorter values are not registered (replacing "abc" everywhere would garble text, and hides nothing).
MIN_SECRET_LENGTH = 6

# Anything key-shaped, whether registered or not.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(sk-|sk_|key-)[A-Za-z0-9_\-*]{4,}"), r"\1" + MASK),
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+|%20|\+)[A-Za-z0-9._~+/=\-]{6,}"), r"\1\2" + MASK),
    # URL user info: scheme://user:password@host (also the URL-encoded "%3A%2F%2F" form).
    (re.compile(r"(://|%3A%2F%2F)[^/\s@'\"<>]*(@|%40)", re.IGNORECASE), r"\1" + MASK + r"\2"),
)

_lock = threading.Lock()
_secrets: set[str] = set()
_forms_pattern: re.Pattern[str] | None = None


def _base64_cores(secret: bytes) -> set[str]:
    """The parts of base64 text that encode ``secret`` wherever it sits in a longer byte string.

    base64 works on 3-byte groups, so the encoding of ``secret`` depends on its offset modulo 3 and on its
    neighbours only at the edges; the characters fully determined by ``secret`` are found for each offset.
    """
    cores: set[str] = set()
    for pad in range(3):
        data = b"\0" * pad + secret
        encoded = base64.b64encode(data).decode().rstrip("=")
        start = (0, 2, 3)[pad]  # characters that mix in the bytes before the secret
        full, rest = divmod(len(data), 3)
        end = full * 4 + (0, 1, 2)[rest]  # characters that mix in the bytes after it
        core = encoded[start:end]
        if len(core) >= 4:
            cores.add(core)
            cores.add(core.replace("+", "-").replace("/", "_"))  # urlsafe alphabet
    return cores


def secret_forms(secret: str) -> set[str]:
    """Every form of ``secret`` that :func:`redact` removes (for tests that grep output for leaks)."""
    forms = {secret}
    forms.add(urllib.parse.quote(secret))
    forms.add(urllib.parse.quote(secret, safe=""))
    forms.add(urllib.parse.quote_plus(secret))
    forms.add(json.dumps(secret)[1:-1])
    forms.add(repr(secret)[1:-1])
    forms |= _base64_cores(secret.encode())
    return {f for f in forms if f}


class Secret:
    """A credential that is not shown by accident: like pydantic's ``SecretStr``, plus pickling.

    ``repr``, ``str``, ``format``, pickling/copying and pydantic JSON give ``***``; only :meth:`get` gives the
    value. Holders keep their credentials in one of these, so ``vars(model)`` or a displayed ``__dict__``
    shows ``Secret('***')``. The value is registered for redaction.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)

    def get(self) -> str:
        """The secret itself (to hand to the HTTP client; never to print)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (MASK,))  # a pickle (or deepcopy) never carries the value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: object, handler: object) -> object:
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            lambda v: v if isinstance(v, Secret) else Secret(str(v)),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda v: MASK),
        )


def register_secret(value: str | None) -> None:
    """Treat ``value`` as a secret from now on (no-op for None and values under MIN_SECRET_LENGTH).

    A header value like ``"Bearer TOKEN"`` also registers ``TOKEN``; a ``"Basic BASE64"`` value also
    registers the decoded ``user:password`` and the password.
    """
    global _forms_pattern
    if not value:
        return
    values = {value.strip()}
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if rest:
        values.add(rest)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(rest, validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            if decoded:
                values.add(decoded)
                values.add(decoded.partition(":")[2])
    values = {v for v in values if len(v) >= MIN_SECRET_LENGTH}
    with _lock:
        if values <= _secrets:
            return
        _secrets.update(values)
        forms: set[str] = set()
        for v in _secrets:
            forms |= secret_forms(v)
        # Longest first, so a form is never half-replaced by a shorter one that it contains.
        ordered = sorted(forms, key=len, reverse=True)
        _forms_pattern = re.compile("|".join(re.escape(f) for f in ordered))


def redact(text: str, secret: str | None = None) -> str:
    """``text`` without any registered secret (in any form), ``secret`` (if given), or key-shaped text."""
    if not text:
        return text
    if secret and len(secret) >= MIN_SECRET_LENGTH:
        register_secret(secret)
    elif secret:
        text = text.replace(secret, MASK)
    pattern = _forms_pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for regex, replacement in _PATTERNS:
        text = regex.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (and formatted traceback) with :func:`redact`; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what can be shown, redacted
            message = f"{record.msg!s} {record.args!r}"
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


#: The loggers whose records may carry a credential: ours, the SDK's, and its HTTP stack's.
LOGGER_PREFIXES = ("menglong_magic", "openai", "httpx", "httpx2", "httpcore", "httpcore2")

_filter = RedactingFilter()
_factory_installed = False
_loggers_seen = -1


def _covered(name: str) -> bool:
    return name.partition(".")[0] in LOGGER_PREFIXES


def install_log_redaction() -> None:
    """Redact every record of the known loggers (ours, openai, httpx/httpx2, httpcore/httpcore2). Idempotent.

    Two layers, because a filter on a logger runs only for records that logger itself creates, and the HTTP
    stack creates some loggers lazily (``httpcore2.http11`` is imported at the first connection):

    - the redacting filter is attached to each known logger and every existing child of them (re-checked
      whenever the set of loggers has grown; called before every model request);
    - the log record factory is wrapped (chaining to the previous one) so records of those loggers are
      redacted at creation, whichever logger and whenever it was created.
    """
    global _factory_installed, _loggers_seen
    with _lock:
        if not _factory_installed:
            previous = logging.getLogRecordFactory()

            def factory(*args: object, **kwargs: object) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                if _covered(record.name):
                    _filter.filter(record)
                return record

            logging.setLogRecordFactory(factory)
            _factory_installed = True
        registry = logging.Logger.manager.loggerDict
        if len(registry) == _loggers_seen:
            return
        _loggers_seen = len(registry)
        names = set(LOGGER_PREFIXES) | {name for name in list(registry) if _covered(name)}
    for name in names:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)
