"""TLS on both protocols with a self-signed certificate made here (openssl): a real round trip over
HTTPS and over gRPC with TLS, and plaintext refused on both ports."""

from __future__ import annotations

import socket
import ssl
import subprocess

import grpc
import httpx
import pytest

from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc
from tests.conftest import make_tiny_bundle
from tests.integration.server import running_server
from tests.system_tools import require


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run([require("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def server(certificate, tmp_path_factory):
    cert, key = certificate
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("tls-bundle") / "bundle")
    with running_server(bundle, tls_cert_file=str(cert), tls_key_file=str(key), api_keys="k1") as running:
        yield running


def test_https_round_trip(server):
    assert server.url.startswith("https://")
    response = httpx.post(server.url + "/score", json={"prompt": "hello there", "responses": ["i am fine thanks", "no"]},
                          headers={"authorization": "Bearer k1"}, verify=server.verify, timeout=30)
    assert response.status_code == 200 and len(response.json()["rewards"]) == 2
    with pytest.raises(httpx.ConnectError):  # our certificate is not one the system trusts
        httpx.get(server.url + "/healthz", timeout=10)
    with pytest.raises(httpx.TransportError):  # plaintext HTTP to the TLS port
        httpx.get(server.url.replace("https://", "http://") + "/healthz", timeout=10)


def test_grpc_tls_round_trip(server, certificate):
    cert, _ = certificate
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    request = pb.ScoreRequest(prompt=pb.Prompt(text="hello there"), responses=["i am fine thanks"])
    with grpc.secure_channel(server.grpc_target, credentials) as channel:
        reply = pb_grpc.RewardModelStub(channel).Score(request, timeout=10, metadata=[("authorization", "Bearer k1")])
    https = httpx.post(server.url + "/score", json={"prompt": "hello there", "responses": ["i am fine thanks"]},
                       headers={"authorization": "Bearer k1"}, verify=server.verify, timeout=30).json()
    assert list(reply.rewards) == pytest.approx(https["rewards"], abs=1e-6)
    with grpc.insecure_channel(server.grpc_target) as channel:  # plaintext to the TLS port
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.RewardModelStub(channel).Score(request, timeout=5, metadata=[("authorization", "Bearer k1")])
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_settings_go_together(tmp_path, certificate):
    from pydantic import ValidationError

    from rmserve.service.settings import Settings

    cert, _ = certificate
    with pytest.raises(ValidationError, match="tls_cert_file and tls_key_file go together"):
        Settings(tls_cert_file=cert)
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(tls_cert_file=cert, tls_key_file=tmp_path / "missing.pem")


def handshake(port: int, version: ssl.TLSVersion, ciphers: str | None = None) -> str:
    """Open a TLS connection at exactly `version` (with `ciphers` for TLS 1.2): the version negotiated, or the
    handshake's error. The client allows old versions and weak suites (security level 0), so a refusal
    is the server's."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version
    context.set_ciphers((ciphers or "ALL") + ":@SECLEVEL=0")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.version() or ""
    except (ssl.SSLError, ConnectionError) as e:
        return f"refused: {e}"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_only_tls_1_2_and_later_with_forward_secret_suites(server, protocol):
    port = int((server.url if protocol == "http" else server.grpc_target).rsplit(":", 1)[1])
    assert handshake(port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert handshake(port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert handshake(port, ssl.TLSVersion.TLSv1_2, "ECDHE+AESGCM") == "TLSv1.2"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        assert handshake(port, old).startswith("refused"), old
    # TLS 1.2 without forward secrecy (RSA key exchange) or with CBC suites: refused.
    assert handshake(port, ssl.TLSVersion.TLSv1_2, "AES256-GCM-SHA384:AES128-SHA").startswith("refused")
    assert handshake(port, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA").startswith("refused")


def test_a_certificate_and_key_that_do_not_belong_together_stop_start_up(tmp_path, certificate, monkeypatch, capsys):
    """A key of another certificate, a file that is not PEM, the two swapped: refused before the bundle
    loads or a port is bound, naming both settings, instead of a traceback from the TLS library."""
    from rmserve.cli import main

    started = []

    async def serve(settings):  # stands in for the server: a refused start never reaches it
        started.append(settings)
        return 0

    monkeypatch.setattr("rmserve.service.process.runtime.serve", serve)
    cert, key = certificate
    other_key, other_cert = tmp_path / "other-key.pem", tmp_path / "other-cert.pem"
    subprocess.run([require("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout",
                    str(other_key), "-out", str(other_cert), "-subj", "/CN=other"], check=True, capture_output=True)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    bundle = make_tiny_bundle(tmp_path / "bundle")
    for cert_file, key_file in [(cert, other_key), (not_pem, key), (cert, not_pem), (key, cert)]:
        code = main(["serve", "--bundle", str(bundle), "--tls-cert-file", str(cert_file), "--tls-key-file",
                     str(key_file)])
        err = capsys.readouterr().err
        assert code == 2 and "tls_cert_file" in err and "tls_key_file" in err, (cert_file, key_file, err)
        assert "Traceback" not in err
    assert not started
