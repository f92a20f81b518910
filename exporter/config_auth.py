"""An endpoint's credentials and TLS settings, named as in a Prometheus `scrape_config`.

`authorization` (`type`, default Bearer; `credentials` or `credentials_file`), `basic_auth` (`username`;
`password` or `password_file`), `http_headers` (extra request headers: `values`, `secrets`, `files`) and
`tls_config` (`ca_file`, `cert_file`, `key_file`, `server_name`, `insecure_skip_verify`, `min_version`,
`max_version`). What cannot work together is refused here, each with one line naming the field; files are
not read here but at each scrape, when they changed (`exporter.sources.endpoint_auth`), so a rotated token or
certificate is picked up without a restart. Secret values are never shown: not in `repr`, not by
`check-config` (`exporter.redact.redact_settings`), not in a validation error (`exporter.redact.SECRET_KEYS`).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from exporter.config import EndpointConfig

# RFC 9110 token: a header name, an auth scheme.
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
# Headers an endpoint's http_headers may not set: Prometheus's reserved list (they change the connection, or
# the scraper sets them itself), and Accept, which the exporter negotiates.
RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "host",
        "content-encoding",
        "content-length",
        "content-type",
        "user-agent",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "www-authenticate",
        "accept-encoding",
        "x-prometheus-remote-write-version",
        "x-prometheus-remote-read-version",
        "x-prometheus-scrape-timeout-seconds",
        "x-amz-date",
        "x-amz-security-token",
        "x-amz-content-sha256",
        "accept",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-connection",
    }
)
TlsVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
TLS_VERSION_ORDER = ("TLS10", "TLS11", "TLS12", "TLS13")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def header_value_problem(value: str) -> str | None:
    """Why `value` cannot be sent as a header value (it would end the header or be refused), or None."""
    if any(char in "\r\n\0" for char in value):
        return "holds a line break or NUL"
    if any((ord(char) < 32 and char != "\t") or ord(char) == 127 for char in value):
        return "holds a control character"
    if not value.isascii():
        return "holds a character outside ASCII"
    return None


def _check_header_value(value: str | None) -> str | None:
    if value is not None and (problem := header_value_problem(value)):
        raise ValueError(problem)  # the value is not quoted: SECRET_KEYS keep it out of the message
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthorizationConfig(_Strict):
    """The `Authorization: <type> <credentials>` header on every scrape."""

    type: str = Field("Bearer", description="Authentication scheme (Basic is set with `basic_auth`).")
    credentials: str | None = Field(
        None, min_length=1, repr=False, description="The credentials (a secret: never shown)."
    )
    credentials_file: Path | None = Field(
        None, description="File holding the credentials, read when it changes (surrounding white space cut)."
    )

    @field_validator("type")
    @classmethod
    def _check_type(cls, value: str) -> str:
        if not TOKEN.fullmatch(value):
            raise ValueError("expected an authentication scheme such as Bearer (letters, digits, -._~+)")
        if value.lower() == "basic":
            raise ValueError("Basic is set with `basic_auth` (username, password), not `authorization`")
        return value

    @field_validator("credentials")
    @classmethod
    def _check_credentials(cls, value: str | None) -> str | None:
        return _check_header_value(value)

    @model_validator(mode="after")
    def _one_source(self) -> AuthorizationConfig:
        if self.credentials is not None and self.credentials_file is not None:
            raise ValueError("`credentials` and `credentials_file` are mutually exclusive; set one")
        if self.credentials is None and self.credentials_file is None:
            raise ValueError("needs `credentials` or `credentials_file`")
        return self


class BasicAuthConfig(_Strict):
    """HTTP basic authentication (`Authorization: Basic …`) on every scrape."""

    username: str = Field(description="User name (no ':').")
    password: str | None = Field(None, repr=False, description="Password (a secret: never shown).")
    password_file: Path | None = Field(
        None, description="File holding the password, read when it changes (surrounding white space cut)."
    )

    @field_validator("username")
    @classmethod
    def _check_username(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("a basic auth user name cannot hold ':'")
        return _check_header_value(value) or value

    @field_validator("password")
    @classmethod
    def _check_password(cls, value: str | None) -> str | None:
        return _check_header_value(value)

    @model_validator(mode="after")
    def _one_source(self) -> BasicAuthConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("`password` and `password_file` are mutually exclusive; set one")
        return self


class HttpHeaderConfig(_Strict):
    """One extra request header: its values as written, secret values, and values read from files."""

    values: list[str] = Field(default_factory=list, description="Values, sent as written.")
    secrets: list[str] = Field(
        default_factory=list, repr=False, description="Values that are secrets (never shown)."
    )
    files: list[Path] = Field(
        default_factory=list, description="Files each holding one value, read when they change."
    )

    @field_validator("values", "secrets")
    @classmethod
    def _check_values(cls, values: list[str]) -> list[str]:
        for value in values:
            _check_header_value(value)
        return values

    @model_validator(mode="after")
    def _some_value(self) -> HttpHeaderConfig:
        if not (self.values or self.secrets or self.files):
            raise ValueError("a header needs at least one of `values`, `secrets`, `files`")
        return self


class TlsClientConfig(_Strict):
    """TLS for an https:// endpoint: the CA to trust, a client certificate (mTLS), the name to verify."""

    ca_file: Path | None = Field(
        None,
        description="CA certificates (PEM) to verify the engine's certificate with; default the Mozilla "
        "bundle (certifi), as for an https:// endpoint without tls_config.",
    )
    cert_file: Path | None = Field(None, description="Client certificate (PEM), with `key_file`: mutual TLS.")
    key_file: Path | None = Field(
        None, description="The client certificate's private key (PEM, unencrypted)."
    )
    server_name: str | None = Field(
        None,
        description="Name sent in SNI and verified against the certificate; default the URL's host.",
    )
    insecure_skip_verify: bool = Field(
        False, description="Do not verify the engine's certificate (testing only: anyone can pose as it)."
    )
    min_version: TlsVersion | None = Field(None, description="Oldest TLS version accepted; default TLS12.")
    max_version: TlsVersion | None = Field(None, description="Newest TLS version offered; default TLS13.")

    @field_validator("server_name")
    @classmethod
    def _check_server_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
        labels = value.removesuffix(".").split(".")
        if len(value) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
            raise ValueError("expected a host name or an IP address")
        return value

    @model_validator(mode="after")
    def _check_pairs(self) -> TlsClientConfig:
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = ("cert_file", "key_file") if self.key_file is None else ("key_file", "cert_file")
            raise ValueError(f"`{given}` needs `{missing}` (a client certificate and its key)")
        low, high = self.min_version, self.max_version
        if low and high and TLS_VERSION_ORDER.index(low) > TLS_VERSION_ORDER.index(high):
            raise ValueError(f"min_version {low} is newer than max_version {high}")
        return self


def check_header_names(headers: dict[str, HttpHeaderConfig] | None) -> dict[str, HttpHeaderConfig] | None:
    """ValueError naming the first header name that is not a token, is reserved, or is given twice."""
    if headers is None:
        return headers
    seen: set[str] = set()
    for name in headers:
        if not TOKEN.fullmatch(name):
            raise ValueError("a header name is letters, digits and -!#$%&'*+.^_`|~")
        lower = name.lower()
        if lower in RESERVED_HEADERS:
            hint = " (use `authorization` or `basic_auth`)" if "authoriz" in lower else ""
            raise ValueError(f"setting header {name!r} is not allowed{hint}")
        if lower in seen:
            raise ValueError(f"header {name!r} is given twice (names are case-insensitive)")
        seen.add(lower)
    return headers


def check_endpoint_auth(endpoint: EndpointConfig) -> None:
    """ValueError (one line, naming the fields) for auth and TLS settings that cannot work together."""
    if endpoint.authorization is not None and endpoint.basic_auth is not None:
        raise ValueError("`authorization` and `basic_auth` are mutually exclusive; set one")
    scheme, _, rest = endpoint.url.partition("://")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority and (endpoint.authorization is not None or endpoint.basic_auth is not None):
        which = "authorization" if endpoint.authorization is not None else "basic_auth"
        raise ValueError(f"the url's user info and `{which}` both set credentials; keep one")
    if endpoint.tls_config is not None and scheme.lower() != "https":
        raise ValueError("`tls_config` is only used with an https:// url")
