"""What the exporter shows of a URL or a setting that may hold a secret: the one redaction for the package.

An endpoint URL may carry credentials: user info (`http://user:password@host/`), a query string
(`/metrics?token=…`), a fragment. Wherever a URL is shown — the `url` label of `tpw_endpoint_info`,
`/api/v1/snapshot`, log lines, error messages, `check-config` — it goes through `redact_url`: scheme, host
(an IPv6 address keeps its brackets), port and path as written; user info, each query value and the
fragment replaced by `<redacted>`, query keys kept so the operator can still tell which parameters are set.
Free text that may quote a URL (an error message) goes through `redact_text`. Settings that are secrets by
name (`credentials`, `password`, `secrets`: the endpoint auth settings, named as in Prometheus) are never
shown either: `redact_settings` for `check-config`, `SECRET_KEYS` for validation errors.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "<redacted>"
# Setting names whose values are secrets: never printed by check-config, never quoted by an error.
SECRET_KEYS = frozenset({"credentials", "password", "secrets"})
# Setting names that hold a URL (shown through redact_url).
URL_KEYS = frozenset({"url", "api_url"})
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_TRAILING = ".,;:!?)]}"  # after a URL in a sentence; not '>', which ends a <redacted>


def redact_url(url: str) -> str:
    """`url` with its user info, each query value and its fragment `<redacted>`.

    `http://u:pw@[::1]:8000/metrics?token=abc&x#f` → `http://<redacted>@[::1]:8000/metrics?token=<redacted>&
    <redacted>#<redacted>`. Everything before the last '@' ahead of the query is user info, even when it holds
    a '/' (a password written without percent-encoding), and so is everything before the last '@' when no '/'
    comes before it (a password holding '?' or '#'): no part of a password is shown as a host, a path or a
    query. A string without '://' is returned as is.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    before_query = re.split(r"[?#]", rest, maxsplit=1)[0]
    user_info, at, _ = before_query.rpartition("@")
    if not at and "@" in rest and "/" not in rest.rpartition("@")[0]:
        user_info, at, _ = rest.rpartition("@")  # a password holding '?' or '#': `http://u:p?w@h/`
    if at:
        rest = rest[len(user_info) + 1 :]
    rest, hash_mark, _ = rest.partition("#")
    location, question, query = rest.partition("?")
    if question:
        query = "&".join(
            f"{key}={REDACTED}" if equals else REDACTED
            for key, equals, _ in (item.partition("=") for item in query.split("&"))
        )
    shown_user = f"{REDACTED}@" if at else ""
    fragment = REDACTED if hash_mark else ""
    return f"{scheme}://{shown_user}{location}{question}{query}{hash_mark}{fragment}"


def redact_text(text: str) -> str:
    """`text` with every URL in it through `redact_url`. A URL runs to the next white space (a password may
    hold quotes or '<'), except that one quoted ('…' or "…") ends at its last closing quote, and punctuation
    that ends it (`URL: reason`) stays outside."""
    if "://" not in text:
        return text

    def redacted(match: re.Match[str]) -> str:
        url, after = match.group(0), ""
        quote = text[match.start() - 1] if match.start() else ""
        if quote in ("'", '"') and quote in url:
            url, closing, after = url.rpartition(quote)
            after = closing + after
        kept = url.rstrip(_TRAILING)  # the sentence's punctuation: `cannot connect to URL: …`
        return redact_url(kept) + url[len(kept) :] + after

    return _URL_IN_TEXT.sub(redacted, text)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with its URLs redacted and each of `secrets` (values the caller knows, e.g. a token read from
    a file) replaced by `<redacted>`, longest first."""
    text = redact_text(text)
    for secret in sorted({secret for secret in secrets if secret}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def redact_settings(data: Any) -> bool:
    """Redact, in place, the secrets in a settings dump (`Config.model_dump(mode="json")`): URLs through
    `redact_url`, the values of SECRET_KEYS (a string, or each string of a list). Whether anything
    changed."""
    changed = False
    if isinstance(data, dict):
        for key, value in data.items():
            if key in SECRET_KEYS and value is not None:
                shown: Any = [REDACTED for _ in value] if isinstance(value, list) else REDACTED
                changed = changed or shown != value
                data[key] = shown
            elif key in URL_KEYS and isinstance(value, str):
                shown = redact_url(value)
                changed = changed or shown != value
                data[key] = shown
            else:
                changed = redact_settings(value) or changed
    elif isinstance(data, list):
        for item in data:
            changed = redact_settings(item) or changed
    return changed


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record through `redact_text` (httpx logs each request's URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "://" in message:
            record.msg, record.args = redact_text(message), None
        return True


_FILTER = RedactingFilter()


# httpx logs each request's URL (INFO); httpcore, at DEBUG, response headers (a Location may hold a token).
LIBRARY_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy")


def redact_library_logs(names: Iterable[str] = LIBRARY_LOGGERS) -> None:
    """Install the redacting filter on the loggers of libraries that log URLs (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
