"""Endpoints over TLS against a real TLS server on loopback serving a real engine page: mutual TLS, an unknown
CA, insecure_skip_verify, server_name, and TLS files changed mid-run. Certificates are made here with the
openssl command: a throwaway CA, another CA the engine's certificate is not from, a server certificate for
127.0.0.1, one for the name vllm.internal only, and a client certificate."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_server import engine_server, fixture

from exporter.config import EndpointConfig, load_config
from exporter.model import EndpointSample
from exporter.sources.endpoints import EndpointsSource


def openssl(*args: str) -> None:
    path = shutil.which("openssl")
    if path is None:
        raise AssertionError("the `openssl` command is missing: apt-get install openssl")
    subprocess.run([path, *args], check=True, capture_output=True, timeout=60)


def new_ca(directory: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.crt"), "-days", "2",
            "-subj", f"/CN=tpw {name}")  # fmt: skip


def sign(directory: Path, name: str, extensions: str, serial: int, ca: str = "ca") -> None:
    """`name`.key and `name`.crt signed by `ca` in `directory`."""
    (directory / f"{name}.ext").write_text(extensions + "\n")
    key, request = str(directory / f"{name}.key"), str(directory / f"{name}.csr")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", request, "-subj", f"/CN={name}")  # fmt: skip
    openssl("x509", "-req", "-in", request, "-CA", str(directory / f"{ca}.crt"),
            "-CAkey", str(directory / f"{ca}.key"), "-set_serial", str(serial), "-days", "2",
            "-extfile", str(directory / f"{name}.ext"), "-out", str(directory / f"{name}.crt"))  # fmt: skip


@pytest.fixture(scope="module")
def pki() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="tpw-endpoint-pki-"))
    new_ca(directory, "ca")
    new_ca(directory, "other-ca")
    sign(directory, "server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth", 1001)
    sign(directory, "named", "subjectAltName=DNS:vllm.internal\nextendedKeyUsage=serverAuth", 1002)
    sign(directory, "client", "subjectAltName=DNS:tpw-exporter\nextendedKeyUsage=clientAuth", 2001)
    sign(directory, "client2", "subjectAltName=DNS:tpw-exporter\nextendedKeyUsage=clientAuth", 2002)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def server_tls(pki: Path, certificate: str = "server", client_certificates: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki / f"{certificate}.crt"), str(pki / f"{certificate}.key"))
    if client_certificates:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(pki / "ca.crt"))
    return context


def endpoint(url: str, **settings: object) -> EndpointConfig:
    entry = {"name": "e", "url": url, "engine": "vllm", **settings}
    return load_config(environ={}, overrides={"endpoints": [entry]}).endpoints[0]


def scrape(config: EndpointConfig, count: int = 1, between: object = None) -> list[EndpointSample]:
    async def run() -> list[EndpointSample]:
        source = EndpointsSource([config])
        try:
            samples = []
            for index in range(count):
                if index and callable(between):
                    between(index)
                samples.append((await source.collect()).endpoints[0])
            return samples
        finally:
            await source.close()

    return asyncio.run(run())


def errors(sample: EndpointSample) -> dict[str, int]:
    return dict(sample.errors_total)


def mtls(pki: Path, client: str = "client") -> dict[str, str]:
    return {
        "ca_file": str(pki / "ca.crt"),
        "cert_file": str(pki / f"{client}.crt"),
        "key_file": str(pki / f"{client}.key"),
    }


def test_mutual_tls_reads_a_real_engine_page_and_without_a_client_certificate_is_up_0_tls(pki: Path) -> None:
    with engine_server(fixture("vllm_v1"), tls=server_tls(pki, client_certificates=True)) as server:
        (sample,) = scrape(endpoint(server.url, tls_config=mtls(pki)))
        (without,) = scrape(endpoint(server.url, tls_config={"ca_file": str(pki / "ca.crt")}))
    assert server.url.startswith("https://127.0.0.1:")
    assert sample.up and sample.engine == "vllm", sample.error
    assert "generation_tokens_total" in {value.field for value in sample.values}
    # The engine's alert arrives after the client's side of the TLS 1.3 handshake, and is often lost to the
    # reset that follows it: either the alert (tls) or a closed connection, said to be one (http).
    assert not without.up and errors(without) in ({"tls": 1}, {"http": 1}), without.error
    assert "certificate required" in (without.error or "") or "client certificate" in (without.error or "")


def test_an_unknown_ca_is_up_0_tls_and_insecure_skip_verify_reads_the_page(pki: Path) -> None:
    with engine_server(fixture("vllm_v1"), tls=server_tls(pki)) as server:
        (unknown,) = scrape(endpoint(server.url, tls_config={"ca_file": str(pki / "other-ca.crt")}))
        (default,) = scrape(endpoint(server.url))  # the Mozilla bundle: no throwaway CA in it
        (skipped,) = scrape(endpoint(server.url, tls_config={"insecure_skip_verify": True}))
    for sample in (unknown, default):
        assert not sample.up and errors(sample) == {"tls": 1}
        assert sample.error == (
            f"TLS with {server.url} failed: certificate verify failed: unable to get local issuer certificate"
        )
    assert skipped.up, skipped.error


def test_server_name_is_sent_and_verified(pki: Path) -> None:
    with engine_server(fixture("vllm_v1"), tls=server_tls(pki, "named")) as server:
        ca = str(pki / "ca.crt")
        (by_address,) = scrape(endpoint(server.url, tls_config={"ca_file": ca}))
        (by_name,) = scrape(endpoint(server.url, tls_config={"ca_file": ca, "server_name": "vllm.internal"}))
        (wrong,) = scrape(endpoint(server.url, tls_config={"ca_file": ca, "server_name": "other.internal"}))
    assert not by_address.up and errors(by_address) == {"tls": 1}
    assert "IP address mismatch" in (by_address.error or "")
    assert by_name.up, by_name.error
    assert not wrong.up and "Hostname mismatch" in (wrong.error or "")


def test_tls_files_changed_mid_run_are_loaded_again(pki: Path, tmp_path: Path) -> None:
    ca_file, cert_file, key_file = tmp_path / "ca.crt", tmp_path / "client.crt", tmp_path / "client.key"
    shutil.copy(pki / "other-ca.crt", ca_file)  # the wrong CA at first
    shutil.copy(pki / "client.crt", cert_file)
    shutil.copy(pki / "client.key", key_file)
    settings = {"ca_file": str(ca_file), "cert_file": str(cert_file), "key_file": str(key_file)}

    def change(index: int) -> None:
        if index == 1:
            shutil.copy(pki / "ca.crt", ca_file)  # fixed
        elif index == 2:  # the client certificate renewed (another key too)
            shutil.copy(pki / "client2.crt", cert_file)
            shutil.copy(pki / "client2.key", key_file)
        elif index == 3:
            key_file.unlink()  # gone: up 0, naming the file
        elif index == 4:
            key_file.write_text(
                "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n"
            )

    with engine_server(fixture("vllm_v1"), tls=server_tls(pki, client_certificates=True)) as server:
        samples = scrape(endpoint(server.url, tls_config=settings), 5, change)
    wrong_ca, fixed, renewed, missing, broken = samples
    assert not wrong_ca.up and errors(wrong_ca) == {"tls": 1}
    assert fixed.up and renewed.up, (fixed.error, renewed.error)
    assert not missing.up and missing.error == f"tls_config.key_file {key_file}: No such file or directory"
    assert not broken.up and (broken.error or "").startswith(
        f"tls_config.cert_file/key_file {cert_file}, {key_file}: cannot load the certificate and key ("
    )
    assert "c2VjcmV0" not in (broken.error or "")
    assert errors(broken) == {"tls": 1, "tls_config": 2}
