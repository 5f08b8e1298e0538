"""The local CA: a real TLS handshake against its server certificate, renewal, and the files' modes."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509

from crypto_platform.credentials import TlsFiles
from local_stack import certificates
from local_stack.certificates import ensure_certificates


def handshake(files: TlsFiles, server_name: str) -> str:
    """Connects a client that trusts only ``ca.crt`` to a server holding ``server.crt``; the server's CN."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.server_cert, files.server_key)
    client_context = ssl.create_default_context(cafile=str(files.ca_cert))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            connection, _ = listener.accept()
            try:
                with server_context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname()) as raw, \
                    client_context.wrap_socket(raw, server_hostname=server_name) as tls:
                subject = dict(item[0] for item in tls.getpeercert()["subject"])
                tls.sendall(b"x")
                return subject["commonName"]
        finally:
            thread.join(5)


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "postgres", "kafka"])
def test_clients_trusting_the_ca_verify_every_platform_name(tmp_path, name):
    files = ensure_certificates(tmp_path / "tls")
    assert handshake(files, name) == "localhost"


def test_a_name_not_in_the_certificate_is_refused(tmp_path):
    files = ensure_certificates(tmp_path / "tls")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(files, "evil.example")


def test_keys_are_private_and_the_folder_is_closed(tmp_path):
    files = ensure_certificates(tmp_path / "tls")
    assert stat.S_IMODE(files.folder.stat().st_mode) == 0o700
    for path in (files.ca_key, files.server_key, files.ca_cert, files.server_cert):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_second_call_keeps_both_certificates(tmp_path):
    files = ensure_certificates(tmp_path / "tls")
    before = (files.ca_cert.read_bytes(), files.server_cert.read_bytes(), files.server_key.read_bytes())
    ensure_certificates(tmp_path / "tls")
    assert (files.ca_cert.read_bytes(), files.server_cert.read_bytes(), files.server_key.read_bytes()) == before


def test_a_new_host_reissues_the_server_certificate_under_the_same_ca(tmp_path):
    files = ensure_certificates(tmp_path / "tls")
    ca, server = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    ensure_certificates(tmp_path / "tls", (*certificates.DEFAULT_HOSTS, "crypto.internal"))
    assert files.ca_cert.read_bytes() == ca and files.server_cert.read_bytes() != server
    assert handshake(files, "crypto.internal") == "localhost"


def test_a_certificate_near_its_end_is_renewed(tmp_path, monkeypatch):
    files = ensure_certificates(tmp_path / "tls")
    monkeypatch.setattr(certificates, "SERVER_DAYS", 10)
    files.server_cert.unlink()
    ensure_certificates(tmp_path / "tls")
    short = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    monkeypatch.undo()
    ensure_certificates(tmp_path / "tls")
    renewed = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert renewed.not_valid_after_utc - short.not_valid_after_utc > dt.timedelta(days=300)
