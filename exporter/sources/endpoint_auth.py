"""An endpoint's credentials and TLS at scrape time (the settings: `exporter.config_auth`).

Credential files (`authorization.credentials_file`, `basic_auth.password_file`, `http_headers.*.files`) are
read at the scrape, and read again when they change (device, inode, size, modification and change times:
an edit in place, an atomic rename and a Kubernetes secret's symlink swap all show), so a rotated token is
sent from the next scrape on, as Prometheus does. TLS material (`tls_config`: CA, client certificate and key)
is loaded into one `ssl.SSLContext` per endpoint, kept while its files are unchanged and built again when
one changes. A file that is missing, unreadable, empty or not what it should be makes that endpoint `up 0`
with reason `auth_config` (credentials) or `tls_config` (TLS material), and a message naming the setting
and the file: never a byte of what the file holds. A TLS handshake that fails (an unknown CA, a name that
does not match, a client certificate the engine refuses) is reason `tls` (`tls_failure`).
"""

from __future__ import annotations

import base64
import os
import re
import ssl
from pathlib import Path

from exporter.config import EndpointConfig
from exporter.config_auth import TlsClientConfig, header_value_problem
from exporter.sources.page import PageError

AUTH_CONFIG = "auth_config"  # reasons of tpw_endpoint_scrape_errors_total
TLS_CONFIG = "tls_config"
TLS = "tls"
MAX_SECRET_FILE_BYTES = 64 * 1024
MAX_TLS_FILE_BYTES = 1024 * 1024
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

Stamp = tuple[int, int, int, int, int]


def _stamp(path: Path) -> Stamp:
    """What changes when the file does; OSError if it cannot be looked at."""
    info = os.stat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _read_capped(path: Path, cap: int) -> bytes | None:
    """The file's bytes, or None if it holds more than `cap`; OSError if it cannot be read."""
    with open(path, "rb") as file:
        data = file.read(cap + 1)
    return None if len(data) > cap else data


class SecretFile:
    """A file holding one secret (a token, a password, a header's value), read again when it changes."""

    def __init__(self, path: Path, setting: str) -> None:
        self.path = path
        self.setting = setting  # e.g. endpoints' authorization.credentials_file, for messages
        self._stamp: Stamp | None = None
        self._value: str | None = None

    def _fail(self, problem: str) -> PageError:
        self._stamp = self._value = None
        return PageError(AUTH_CONFIG, f"{self.setting} {self.path}: {problem}")

    def value(self) -> str:
        """The file's text, white space around it cut; PageError auth_config naming the file if unusable."""
        try:
            stamp = _stamp(self.path)
            if stamp == self._stamp and self._value is not None:
                return self._value
            data = _read_capped(self.path, MAX_SECRET_FILE_BYTES)
        except OSError as exc:
            raise self._fail(_os_reason(exc)) from None
        if data is None:
            raise self._fail(f"larger than {MAX_SECRET_FILE_BYTES // 1024} KiB, not a credentials file")
        try:
            text = data.decode("utf-8-sig").strip()
        except UnicodeDecodeError:
            raise self._fail("not UTF-8 text") from None
        if not text:
            raise self._fail("empty")
        problem = header_value_problem(text)
        if problem is not None:
            raise self._fail(problem)
        self._stamp, self._value = stamp, text
        return text

    @property
    def last_value(self) -> str | None:
        return self._value


class EndpointAuth:
    """The headers an endpoint's scrapes carry (Authorization, http_headers), and the values to scrub."""

    def __init__(self, config: EndpointConfig) -> None:
        self._authorization: tuple[str, str | SecretFile] | None = None
        self._basic: tuple[str, str | SecretFile] | None = None
        self._headers: list[tuple[str, str | SecretFile]] = []
        self._known: list[str] = []  # secrets written in the config
        if config.authorization is not None:
            auth = config.authorization
            credentials: str | SecretFile
            if auth.credentials_file is not None:
                credentials = SecretFile(auth.credentials_file, "authorization.credentials_file")
            else:
                credentials = auth.credentials or ""
                self._known.append(credentials)
            self._authorization = (auth.type, credentials)
        if config.basic_auth is not None:
            basic = config.basic_auth
            password: str | SecretFile
            if basic.password_file is not None:
                password = SecretFile(basic.password_file, "basic_auth.password_file")
            else:
                password = basic.password or ""
                self._known.append(password)
            self._basic = (basic.username, password)
        for name, header in (config.http_headers or {}).items():
            self._headers += [(name, value) for value in header.values]
            self._headers += [(name, secret) for secret in header.secrets]
            self._known += header.secrets
            self._headers += [(name, SecretFile(path, f"http_headers.{name}.files")) for path in header.files]

    @property
    def configured(self) -> bool:
        return bool(self._authorization or self._basic or self._headers)

    def headers(self) -> list[tuple[str, str]]:
        """This scrape's extra request headers, files read if they changed; PageError auth_config."""
        out = [(name, _text(value)) for name, value in self._headers]
        if self._authorization is not None:
            scheme, credentials = self._authorization
            out.append(("Authorization", f"{scheme} {_text(credentials)}"))
        if self._basic is not None:
            username, password = self._basic
            out.append(("Authorization", f"Basic {_basic_token(username, _text(password))}"))
        return out

    def secrets(self) -> list[str]:
        """Every secret value the scrape may send (as written, as last read, as encoded): for scrubbing
        messages that might quote one."""
        values = list(self._known)
        files = [value for _, value in self._headers if isinstance(value, SecretFile)]
        for part in (self._authorization, self._basic):
            if part is not None and isinstance(part[1], SecretFile):
                files.append(part[1])
        values += [last for file in files if (last := file.last_value)]
        if self._basic is not None:
            username, password = self._basic
            plain = password if isinstance(password, str) else password.last_value
            if plain is not None:
                values.append(_basic_token(username, plain))
        return [value for value in values if len(value) >= 3]


def _text(value: str | SecretFile) -> str:
    return value if isinstance(value, str) else value.value()


def _basic_token(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def ssl_reason(exc: BaseException) -> str:
    """A short, lower-case reason for an ssl or OS error (no file contents, no source line)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).split(" (_ssl.c")[0]
    return re.sub(r"^\[[A-Z0-9_: ]+\]\s*", "", text) or type(exc).__name__


def tls_failure(exc: BaseException) -> str | None:
    """The TLS problem behind an httpx error (a handshake refused, a certificate not trusted, an alert
    from the engine), or None when it is not one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return ssl_reason(current)
        current = current.__cause__ or current.__context__
    match = re.match(r"\[SSL(?:: [A-Z0-9_]+)?\]\s*([^(]+)", str(exc))
    return match.group(1).strip() if match else None


def closed_without_answer(exc: Exception) -> str | None:
    """For an https endpoint: the message for a connection closed before any answer, or None.

    With TLS 1.3 the server checks the client's certificate after the client's side of the handshake is
    done; an engine that wants one (or refuses the one sent) then sends an alert and closes, and the alert is
    often lost to the reset before it is read: the client sees only a closed connection."""
    import httpx

    closed = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, ConnectionError)
    if isinstance(exc, closed):
        return (
            f"{type(exc).__name__}: the engine closed the connection without an answer (over TLS, how an "
            "engine refuses a missing or unknown client certificate)"
        )
    return None


def _no_password() -> str:
    raise ssl.SSLError("the key is encrypted")


class TlsMaterial:
    """An endpoint's `ssl.SSLContext`, built from `tls_config` and built again when one of its files
    changes; PageError tls_config (naming the setting and the file) when it cannot be."""

    def __init__(self, tls: TlsClientConfig, default_ca_file: str | None = None) -> None:
        self.tls = tls
        self._default_ca_file = default_ca_file
        self._files = [
            (setting, path)
            for setting, path in (
                ("tls_config.ca_file", tls.ca_file),
                ("tls_config.cert_file", tls.cert_file),
                ("tls_config.key_file", tls.key_file),
            )
            if path is not None
        ]
        self._stamps: list[Stamp] | None = None
        self._context: ssl.SSLContext | None = None

    @property
    def files(self) -> list[Path]:
        return [path for _, path in self._files]

    def context(self) -> ssl.SSLContext:
        """The current context: the cached one while no file changed."""
        stamps = []
        for setting, path in self._files:
            try:
                stamps.append(_stamp(path))
            except OSError as exc:
                self._context = None
                raise PageError(TLS_CONFIG, f"{setting} {path}: {_os_reason(exc)}") from None
        if self._context is None or stamps != self._stamps:
            self._context = None
            self._context = self._build()
            self._stamps = stamps
        return self._context

    def _build(self) -> ssl.SSLContext:
        tls = self.tls
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.minimum_version = TLS_VERSIONS[tls.min_version or "TLS12"]
            if tls.max_version is not None:
                context.maximum_version = TLS_VERSIONS[tls.max_version]
        except (ValueError, ssl.SSLError) as exc:
            raise PageError(
                TLS_CONFIG, f"tls_config.min_version/max_version: not available here ({ssl_reason(exc)})"
            ) from None
        if tls.ca_file is not None:
            self._load_ca(context, tls.ca_file)
        elif self._default_ca_file is not None:
            context.load_verify_locations(self._default_ca_file)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if tls.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if tls.cert_file is not None and tls.key_file is not None:
            self._load_client_certificate(context, tls.cert_file, tls.key_file)
        return context

    @staticmethod
    def _load_ca(context: ssl.SSLContext, path: Path) -> None:
        setting = "tls_config.ca_file"
        try:
            data = _read_capped(path, MAX_TLS_FILE_BYTES)
        except OSError as exc:
            raise PageError(TLS_CONFIG, f"{setting} {path}: {_os_reason(exc)}") from None
        if data is None or b"-----BEGIN CERTIFICATE-----" not in data:
            raise PageError(TLS_CONFIG, f"{setting} {path}: no PEM certificate in it")
        try:
            context.load_verify_locations(cadata=data.decode("ascii", errors="replace"))
        except (ssl.SSLError, ValueError) as exc:
            problem = f"cannot load the CA certificates ({ssl_reason(exc)})"
            raise PageError(TLS_CONFIG, f"{setting} {path}: {problem}") from None

    @staticmethod
    def _load_client_certificate(context: ssl.SSLContext, cert: Path, key: Path) -> None:
        for setting, path, marker in (
            ("tls_config.cert_file", cert, b"-----BEGIN CERTIFICATE-----"),
            ("tls_config.key_file", key, b"PRIVATE KEY-----"),
        ):
            try:
                data = _read_capped(path, MAX_TLS_FILE_BYTES)
            except OSError as exc:
                raise PageError(TLS_CONFIG, f"{setting} {path}: {_os_reason(exc)}") from None
            if data is None or marker not in data:
                kind = "certificate" if setting.endswith("cert_file") else "private key"
                raise PageError(TLS_CONFIG, f"{setting} {path}: no PEM {kind} in it")
            if setting.endswith("key_file") and b"ENCRYPTED" in data:
                raise PageError(
                    TLS_CONFIG, f"{setting} {path}: the key is encrypted; an unencrypted key is needed"
                )
        try:
            context.load_cert_chain(str(cert), str(key), _no_password)
        except (ssl.SSLError, OSError, ValueError) as exc:
            problem = f"cannot load the certificate and key ({ssl_reason(exc)})"
            raise PageError(TLS_CONFIG, f"tls_config.cert_file/key_file {cert}, {key}: {problem}") from None
