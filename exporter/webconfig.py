"""The Prometheus exporter-toolkit's web configuration file (`--web.config.file`): TLS, basic auth, headers.

The format is the toolkit's (docs/web-configuration.md in prometheus/exporter-toolkit), so one file can
serve node_exporter and this exporter. What Python's `ssl` module cannot do is refused with a one-line
error rather than half done; what has no effect here is accepted and ignored:

  tls_server_config
    cert_file, key_file, cert, key        served certificate and key (files, or inline PEM); unencrypted key
    client_ca_file, client_ca             CAs that client certificates must chain to
    client_auth_type                      NoClientCert (default), RequestClientCert (no certificate is asked
                                          for: nothing here reads an unverified one, so every client
                                          connects, as with the toolkit), VerifyClientCertIfGiven,
                                          RequireAndVerifyClientCert. RequireAnyClientCert (and its old name
                                          RequireClientCert) is refused: `ssl` cannot demand a certificate
                                          without verifying it.
    client_allowed_sans                   checked once the handshake is done; a certificate without one of
                                          them has its connection closed (the toolkit fails the handshake)
    min_version, max_version              TLS10 … TLS13 (default TLS12 … TLS13), as the system's OpenSSL
                                          allows
    cipher_suites                         Go's names; applied to TLS 1.2 and below (TLS 1.3 suites are
                                          accepted and, as in Go, not configurable)
    prefer_server_cipher_suites           default true
    curve_preferences                     one curve (CurveP256, CurveP384, CurveP521, X25519): `ssl` can set
                                          one group, not a preference list, so a longer list is refused
  http_server_config
    headers                               added to every response; only the toolkit's five headers, with its
                                          allowed values
    http2                                 accepted, ignored: the exporter speaks HTTP/1.1
  basic_auth_users                        user: bcrypt hash
  rate_limit                              interval (Go duration) and burst: a token bucket, 429 when empty

Relative file names are relative to the web config file's folder, as in the toolkit. Errors name the
field (`tls_server_config.client_auth_type: …`) and never quote a secret or a file's contents.
`WebConfigWatcher` re-reads the file and the files it names when their modification time, size or inode
changes (looked at every RELOAD_CHECK_SECONDS); a new certificate is used by new connections, and a file
that no longer loads is logged once and the previous configuration kept.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exporter.config import ConfigError, shown_value

log = logging.getLogger(__name__)

RELOAD_CHECK_SECONDS = 3.0

CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_REFUSED_CLIENT_AUTH = {
    "RequireAnyClientCert": "Python's ssl module cannot require a client certificate without verifying it; "
    "use RequireAndVerifyClientCert with client_ca_file",
}
_REFUSED_CLIENT_AUTH["RequireClientCert"] = _REFUSED_CLIENT_AUTH["RequireAnyClientCert"]
_VERIFY_MODES = {
    "": ssl.CERT_NONE,
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's crypto/tls names (tls.CipherSuites()) → OpenSSL's. None: a TLS 1.3 suite, which Go accepts in the
# list and does not let anyone configure; neither does Python's ssl.
CIPHER_SUITES: dict[str, str | None] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
# The toolkit's extraHTTPHeaders: the only headers it lets a file add, and their allowed values (None: any).
EXTRA_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
BCRYPT_HASH = re.compile(r"\$2[abxy]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

_TLS_KEYS = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)
_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")


class WebConfigError(ConfigError):
    """A web config file problem, one line naming the file and the field."""


@dataclass(frozen=True)
class TlsSettings:
    """tls_server_config, resolved: file paths absolute, names mapped to what `ssl` takes."""

    cert_file: Path | None
    key_file: Path | None
    cert_pem: str | None
    key_pem: str | None = field(repr=False)
    client_ca_file: Path | None
    client_ca_pem: str | None
    client_auth_type: str
    client_allowed_sans: tuple[str, ...] | None
    min_version: ssl.TLSVersion
    max_version: ssl.TLSVersion
    ciphers: tuple[str, ...]
    prefer_server_cipher_suites: bool
    curve: str | None

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(path for path in (self.cert_file, self.key_file, self.client_ca_file) if path)

    @property
    def verifies_clients(self) -> bool:
        return _VERIFY_MODES[self.client_auth_type] != ssl.CERT_NONE


@dataclass(frozen=True)
class RateLimit:
    interval_seconds: float
    burst: int


@dataclass(frozen=True)
class WebConfig:
    """One reading of the web config file (or none: plain HTTP, no auth, no extra headers)."""

    path: Path | None = None
    tls: TlsSettings | None = None
    users: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    headers: tuple[tuple[bytes, bytes], ...] = ()
    rate_limit: RateLimit | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file this configuration was read from: the web config file and the TLS files it names."""
        own = (self.path,) if self.path else ()
        return own + (self.tls.files if self.tls else ())

    def summary(self) -> str:
        """One line for the log: what the file turns on (never a secret)."""
        parts = [f"TLS ({self.tls.client_auth_type})" if self.tls else "plain HTTP"]
        if self.users:
            parts.append(f"basic auth ({len(self.users)} user{'s' if len(self.users) != 1 else ''})")
        if self.headers:
            parts.append(f"{len(self.headers)} extra header{'s' if len(self.headers) != 1 else ''}")
        if self.rate_limit:
            parts.append(f"rate limit {self.rate_limit.burst} per {self.rate_limit.interval_seconds:g} s")
        if not self.users:
            parts.append("no auth")
        return ", ".join(parts)


def _fail(path: Path, where: str, problem: str) -> WebConfigError:
    return WebConfigError(f"web config file {path}: {where}: {problem}")


def _mapping(path: Path, where: str, value: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, where, f"expected a mapping, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise _fail(
                path,
                f"{where}.{key}" if where else str(key),
                f"unknown field (allowed: {', '.join(allowed)})",
            )
    return value


def _string(path: Path, where: str, value: Any, secret: bool = False) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        shown = type(value).__name__ if secret else shown_value(value)
        raise _fail(path, where, f"expected a string, got {shown}")
    return value


def _strings(path: Path, where: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(path, where, f"expected a list, got {type(value).__name__}")
    return [_string(path, f"{where}[{index}]", item) for index, item in enumerate(value)]


def parse_go_duration(text: str) -> float:
    """Go's time.ParseDuration ("1s", "1m30s", "250ms", "0") in seconds; ValueError otherwise."""
    text = text.strip()
    if text in ("0", "+0", "-0"):
        return 0.0
    if text.startswith("-"):
        raise ValueError("must not be negative")
    body = text.removeprefix("+")
    position, total = 0, 0.0
    while position < len(body):
        match = _GO_DURATION.match(body, position)
        if match is None:
            raise ValueError(f"expected a duration such as 1s, 250ms or 1m30s, got {shown_value(text)}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not body:
        raise ValueError("expected a duration such as 1s, 250ms or 1m30s, got ''")
    return total


def _resolve(base: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else base / path


def _read(path: Path, where: str, file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise _fail(path, where, f"cannot read {file}: {exc.strerror or type(exc).__name__}") from None


def _parse_tls(path: Path, raw: Any) -> TlsSettings | None:
    section = _mapping(path, "tls_server_config", raw, _TLS_KEYS)
    where = "tls_server_config"
    text = {key: _string(path, f"{where}.{key}", section.get(key), secret=key == "key") for key in (
        "cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type", "client_ca_file",
        "min_version", "max_version",
    )}  # fmt: skip
    enabled = any(
        text[key] for key in ("cert", "key", "client_ca", "cert_file", "key_file", "client_ca_file")
    )
    if not enabled and not text["client_auth_type"]:
        return None  # the toolkit's "TLS config is not present": plain HTTP
    for inline, file in (("cert", "cert_file"), ("key", "key_file"), ("client_ca", "client_ca_file")):
        if text[inline] and text[file]:
            raise _fail(path, f"{where}.{inline}", f"given together with {file}; give one of them")
    if not text["cert"] and not text["cert_file"]:
        raise _fail(path, where, "missing one of cert or cert_file")
    if not text["key"] and not text["key_file"]:
        raise _fail(path, where, "missing one of key or key_file")

    client_auth = text["client_auth_type"]
    if client_auth in _REFUSED_CLIENT_AUTH:
        raise _fail(
            path,
            f"{where}.client_auth_type",
            f"{client_auth} is not supported: {_REFUSED_CLIENT_AUTH[client_auth]}",
        )
    if client_auth and client_auth not in CLIENT_AUTH_TYPES:
        raise _fail(
            path,
            f"{where}.client_auth_type",
            f"expected one of {', '.join(CLIENT_AUTH_TYPES)} (got {shown_value(client_auth)})",
        )
    has_ca = bool(text["client_ca"] or text["client_ca_file"])
    if has_ca and _VERIFY_MODES[client_auth] == ssl.CERT_NONE:
        raise _fail(
            path,
            f"{where}.client_auth_type",
            "client CAs are configured without a client auth policy that verifies them "
            "(VerifyClientCertIfGiven or RequireAndVerifyClientCert)",
        )
    sans: tuple[str, ...] | None = None
    if section.get("client_allowed_sans") is not None:
        sans = tuple(_strings(path, f"{where}.client_allowed_sans", section["client_allowed_sans"]))
        if _VERIFY_MODES[client_auth] == ssl.CERT_NONE:
            raise _fail(
                path,
                f"{where}.client_allowed_sans",
                "needs client_auth_type VerifyClientCertIfGiven or RequireAndVerifyClientCert",
            )

    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = text[key] or default
        if name not in TLS_VERSIONS:
            raise _fail(
                path, f"{where}.{key}", f"expected one of {', '.join(TLS_VERSIONS)} (got {shown_value(name)})"
            )
        versions[key] = TLS_VERSIONS[name]
    if versions["min_version"] > versions["max_version"]:
        raise _fail(path, f"{where}.min_version", "is above max_version")

    ciphers = []
    for index, name in enumerate(_strings(path, f"{where}.cipher_suites", section.get("cipher_suites"))):
        if name not in CIPHER_SUITES:
            raise _fail(
                path,
                f"{where}.cipher_suites[{index}]",
                f"unknown cipher {shown_value(name)} (Go's names, e.g. "
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)",
            )
        openssl_name = CIPHER_SUITES[name]
        if openssl_name:
            ciphers.append(openssl_name)

    prefer = section.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise _fail(
            path,
            f"{where}.prefer_server_cipher_suites",
            f"expected true or false (got {shown_value(prefer)})",
        )

    curves = _strings(path, f"{where}.curve_preferences", section.get("curve_preferences"))
    for index, name in enumerate(curves):
        if name not in CURVES:
            raise _fail(
                path,
                f"{where}.curve_preferences[{index}]",
                f"unknown curve {shown_value(name)} (allowed: {', '.join(CURVES)})",
            )
    if len(curves) > 1:
        raise _fail(
            path,
            f"{where}.curve_preferences",
            "lists several curves; Python's ssl module can set one, not a preference order: list one, or "
            "leave it out for OpenSSL's defaults",
        )

    base = path.parent
    return TlsSettings(
        cert_file=_resolve(base, text["cert_file"]) if text["cert_file"] else None,
        key_file=_resolve(base, text["key_file"]) if text["key_file"] else None,
        cert_pem=text["cert"] or None,
        key_pem=text["key"] or None,
        client_ca_file=_resolve(base, text["client_ca_file"]) if text["client_ca_file"] else None,
        client_ca_pem=text["client_ca"] or None,
        client_auth_type=client_auth or "NoClientCert",
        client_allowed_sans=sans,
        min_version=versions["min_version"],
        max_version=versions["max_version"],
        ciphers=tuple(ciphers),
        prefer_server_cipher_suites=prefer,
        curve=CURVES[curves[0]] if curves else None,
    )


def _load_pem_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """load_cert_chain from bytes, through anonymous in-memory files (nothing written to disk)."""
    if not hasattr(os, "memfd_create"):
        raise ssl.SSLError("inline cert and key need Linux (memfd_create); use cert_file and key_file")
    descriptors = []
    try:
        for name, data in (("cert", cert), ("key", key)):
            descriptor = os.memfd_create(f"tpw-{name}", 0)
            descriptors.append(descriptor)
            os.write(descriptor, data)
        context.load_cert_chain(
            f"/proc/self/fd/{descriptors[0]}", f"/proc/self/fd/{descriptors[1]}", _no_password
        )
    finally:
        for descriptor in descriptors:
            os.close(descriptor)


def _no_password() -> str:
    raise ssl.SSLError("the key is encrypted")


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).split(" (_ssl.c")[0] or type(exc).__name__


def build_ssl_context(path: Path, tls: TlsSettings) -> ssl.SSLContext:
    """A server SSLContext for `tls`, its files read now; WebConfigError naming the field if it fails."""
    where = "tls_server_config"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.minimum_version = tls.min_version
        context.maximum_version = tls.max_version
    except (ValueError, ssl.SSLError) as exc:
        raise _fail(
            path, f"{where}.min_version", f"not available in this OpenSSL ({_ssl_reason(exc)})"
        ) from None

    cert = tls.cert_pem.encode() if tls.cert_pem else _read(path, f"{where}.cert_file", tls.cert_file)  # type: ignore[arg-type]
    key = tls.key_pem.encode() if tls.key_pem else _read(path, f"{where}.key_file", tls.key_file)  # type: ignore[arg-type]
    cert_field = f"{where}.cert" if tls.cert_pem else f"{where}.cert_file"
    key_field = f"{where}.key" if tls.key_pem else f"{where}.key_file"
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise _fail(path, cert_field, "no PEM certificate in it")
    if b"PRIVATE KEY-----" not in key:
        raise _fail(path, key_field, "no PEM private key in it")
    if b"ENCRYPTED" in key:
        raise _fail(
            path, key_field, "the key is encrypted; an unencrypted key is needed (as for the toolkit)"
        )
    try:
        if tls.cert_file and tls.key_file:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file), _no_password)
        else:
            _load_pem_chain(context, cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise _fail(
            path,
            f"{cert_field}/{key_field.rsplit('.', 1)[1]}",
            f"cannot load the certificate and key ({_ssl_reason(exc)})",
        ) from None

    if tls.ciphers:
        try:
            context.set_ciphers(":".join(tls.ciphers))
        except ssl.SSLError:
            raise _fail(path, f"{where}.cipher_suites", "none of them is available in this OpenSSL") from None
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.curve:
        try:
            context.set_ecdh_curve(tls.curve)
        except (ValueError, ssl.SSLError):
            raise _fail(
                path, f"{where}.curve_preferences", "that curve is not available in this OpenSSL"
            ) from None

    context.verify_mode = _VERIFY_MODES[tls.client_auth_type]
    if context.verify_mode != ssl.CERT_NONE:
        try:
            if tls.client_ca_file:
                data = _read(path, f"{where}.client_ca_file", tls.client_ca_file)
                if b"-----BEGIN CERTIFICATE-----" not in data:
                    raise _fail(path, f"{where}.client_ca_file", "no PEM certificate in it")
                context.load_verify_locations(cadata=data.decode("ascii", errors="replace"))
            elif tls.client_ca_pem:
                context.load_verify_locations(cadata=tls.client_ca_pem)
            else:
                context.load_default_certs(ssl.Purpose.CLIENT_AUTH)  # Go: no ClientCAs → the system's roots
        except (ssl.SSLError, ValueError) as exc:
            field_name = "client_ca_file" if tls.client_ca_file else "client_ca"
            raise _fail(
                path, f"{where}.{field_name}", f"cannot load the CA certificates ({_ssl_reason(exc)})"
            ) from None
    context.set_alpn_protocols(["http/1.1"])
    return context


def _parse_headers(path: Path, raw: Any) -> tuple[tuple[bytes, bytes], ...]:
    section = _mapping(path, "http_server_config", raw, ("http2", "headers"))
    http2 = section.get("http2", True)
    if not isinstance(http2, bool):
        raise _fail(path, "http_server_config.http2", f"expected true or false (got {shown_value(http2)})")
    headers = section.get("headers")
    if headers is None:
        return ()
    if not isinstance(headers, dict):
        raise _fail(path, "http_server_config.headers", f"expected a mapping, got {type(headers).__name__}")
    result = []
    for name, value in headers.items():
        where = f"http_server_config.headers.{name}"
        if name not in EXTRA_HEADERS:
            raise _fail(
                path,
                where,
                f"HTTP header {shown_value(name)} can not be configured "
                f"(allowed: {', '.join(EXTRA_HEADERS)})",
            )
        text = _string(path, where, value)
        allowed = EXTRA_HEADERS[name]
        if text and allowed and text not in allowed:
            raise _fail(path, where, f"expected one of {', '.join(allowed)} (got {shown_value(text)})")
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text) or not text.isascii():
            raise _fail(path, where, "control or non-ASCII characters are not allowed in a header value")
        if text:  # "Unset if blank"
            result.append((name.lower().encode(), text.encode()))
    return tuple(result)


def _parse_users(path: Path, raw: Any) -> dict[str, bytes]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(
            path, "basic_auth_users", f"expected a mapping of user: bcrypt hash, got {type(raw).__name__}"
        )
    users = {}
    for name, value in raw.items():
        user = str(name)
        where = f"basic_auth_users.{shown_value(user)[1:-1]}"
        if ":" in user:
            raise _fail(path, "basic_auth_users", "a user name cannot contain ':' (basic auth splits on it)")
        if not isinstance(value, str) or not BCRYPT_HASH.fullmatch(value):
            raise _fail(path, where, "not a bcrypt hash ($2y$10$… as `htpasswd -nBC 10` makes)")
        users[user] = value.encode()
    return users


def _parse_rate_limit(path: Path, raw: Any) -> RateLimit | None:
    section = _mapping(path, "rate_limit", raw, ("interval", "burst"))
    if not section:
        return None
    interval_raw = section.get("interval", 0)
    try:
        if isinstance(interval_raw, bool) or not isinstance(interval_raw, (str, int)):
            raise ValueError(f"expected a duration such as 1s, got {shown_value(interval_raw)}")
        interval = (
            parse_go_duration(str(interval_raw)) if isinstance(interval_raw, str) else interval_raw * 1e-9
        )
    except ValueError as exc:
        raise _fail(path, "rate_limit.interval", str(exc)) from None
    burst = section.get("burst", 0)
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
        raise _fail(path, "rate_limit.burst", f"expected a whole number ≥ 0 (got {shown_value(burst)})")
    if interval == 0:
        return None  # the toolkit: interval 0 disables the limiter
    return RateLimit(interval, burst)


def load_web_config(path: Path) -> WebConfig:
    """Read and check the file, and build its SSLContext; WebConfigError (one line, the field) if invalid."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WebConfigError(f"web config file {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise WebConfigError(f"web config file {path}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise WebConfigError(f"web config file {path}{where}: invalid YAML") from None
    if data is None:
        data = {}  # an empty file: the toolkit serves plain HTTP with no auth
    if not isinstance(data, dict):
        raise WebConfigError(f"web config file {path}: expected a mapping, got {type(data).__name__}")
    _mapping(path, "", data, _TOP_KEYS)
    tls = _parse_tls(path, data.get("tls_server_config"))
    config = WebConfig(
        path=path,
        tls=tls,
        users=_parse_users(path, data.get("basic_auth_users")),
        headers=_parse_headers(path, data.get("http_server_config")),
        rate_limit=_parse_rate_limit(path, data.get("rate_limit")),
    )
    if tls is None:
        return config
    return WebConfig(
        path=config.path,
        tls=tls,
        users=config.users,
        headers=config.headers,
        rate_limit=config.rate_limit,
        ssl_context=build_ssl_context(path, tls),
    )


def allowed_san(tls: TlsSettings, peercert: Mapping[str, Any] | None) -> bool:
    """Whether a verified client certificate carries one of `client_allowed_sans` (DNS, IP, e-mail, URI)."""
    if tls.client_allowed_sans is None:
        return True
    if not peercert:
        return False
    allowed = set(tls.client_allowed_sans)
    allowed_ips = set()
    for value in tls.client_allowed_sans:
        with contextlib.suppress(ValueError):
            allowed_ips.add(ipaddress.ip_address(value))
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "IP Address":
            try:
                if ipaddress.ip_address(value.strip()) in allowed_ips:
                    return True
            except ValueError:
                continue
        elif value in allowed:
            return True
    return False


Stamp = tuple[int, int, int] | None


def _stamp(path: Path) -> Stamp:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


class WebConfigWatcher:
    """The current `WebConfig`, re-read when its files change (looked at every RELOAD_CHECK_SECONDS)."""

    def __init__(
        self,
        path: Path | None,
        clock: Callable[[], float] = time.monotonic,
        check_seconds: float = RELOAD_CHECK_SECONDS,
    ) -> None:
        self.path = path
        self.current = load_web_config(path) if path is not None else WebConfig()
        self._clock = clock
        self._check_seconds = check_seconds
        self._checked = clock()
        self._stamps = self._stamps_of(self.current)
        self._failed_stamps: dict[Path, Stamp] | None = None

    @staticmethod
    def _stamps_of(config: WebConfig) -> dict[Path, Stamp]:
        return {path: _stamp(path) for path in config.files}

    def check(self) -> bool:
        """Reload if a file changed and RELOAD_CHECK_SECONDS have passed; True when a new config applies."""
        if self.path is None:
            return False
        now = self._clock()
        if now - self._checked < self._check_seconds:
            return False
        self._checked = now
        stamps = self._stamps_of(self.current)
        if stamps == self._stamps or stamps == self._failed_stamps:
            return False
        try:
            config = load_web_config(self.path)
            if (config.tls is None) != (self.current.tls is None):
                raise WebConfigError(
                    f"web config file {self.path}: tls_server_config: turning TLS "
                    f"{'on' if config.tls else 'off'} needs a restart"
                )
        except ConfigError as exc:
            self._failed_stamps = stamps
            log.error("%s; still serving with the previous web config", exc)
            return False
        self.current = config
        self._stamps = self._stamps_of(config)
        self._failed_stamps = None
        log.info("web config %s reloaded: %s", self.path, config.summary())
        return True
