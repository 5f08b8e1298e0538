"""The platform's own certificate authority and its server certificate, in ``STATE_DIR/tls/``.

``ensure_certificates`` makes, on first use, a CA (``ca.crt``, the trust root clients and users pass on;
``ca.key``) and one server certificate signed by it (``server.crt``, ``server.key``) whose subject
alternative names are the loopback names, ``BIND_HOST`` and the compose service names. Later calls keep
both as they are while the server certificate still names every wanted host and has more than
``RENEW_BEFORE`` to live (a folder holding such a certificate is only read: it needs no ``ca.key``, and
may be a read-only mount); otherwise only the server certificate is issued again, so clients keep
trusting the same ``ca.crt``. Keys are written 0600 in a 0700 folder and never leave it (servers that
run as another account get a copy of their own, see ``local_stack.postgres``). ``publish_certificates``
copies all but the CA's key elsewhere: docker-compose's servers and clients get that copy only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import subprocess
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto_platform.credentials import TlsFiles, private_folder, tls_files
from crypto_platform.settings import PlatformSettings
from local_stack.permissions import write_private
from local_stack.processes import StackError

CA_DAYS = 3650
SERVER_DAYS = 397
RENEW_BEFORE = dt.timedelta(days=30)
# The names every server of the platform answers to: loopback, and the services of docker-compose.yml.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1", "postgres", "kafka", "superset", "dagster-webserver")


def _subject_names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue_ca(files: TlsFiles, now: dt.datetime) -> None:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crypto-platform local CA")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(files.ca_key, _key_pem(key))
    write_private(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM))


def _issue_server(files: TlsFiles, hosts: tuple[str, ...], now: dt.datetime) -> None:
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    key = _new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # Client auth too: the Kafka broker shows this certificate to its own controller listener.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(files.server_key, _key_pem(key))
    write_private(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))


def _server_cert_fits(files: TlsFiles, hosts: tuple[str, ...], now: dt.datetime) -> bool:
    """The server certificate exists, was signed by this CA, names every host and lives long enough."""
    if not (files.server_cert.exists() and files.server_key.exists()):
        return False
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, x509.InvalidSignature):
        return False
    named = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    return set(_subject_names(hosts)) <= named and cert.not_valid_after_utc - now > RENEW_BEFORE


def ensure_certificates(folder: Path, hosts: tuple[str, ...] = DEFAULT_HOSTS) -> TlsFiles:
    """The CA and a server certificate for ``hosts`` in ``folder`` (0700), made or renewed as needed."""
    files = TlsFiles(folder)
    now = dt.datetime.now(dt.UTC)
    if not (files.ca_cert.exists() and _server_cert_fits(files, hosts, now)):
        private_folder(folder)
        if not (files.ca_cert.exists() and files.ca_key.exists()):
            _issue_ca(files, now)
        _issue_server(files, hosts, now)
    _write_if_changed(files.trust_bundle, Path(certifi.where()).read_bytes().rstrip() + b"\n"
                      + files.ca_cert.read_bytes())
    return files


def _write_if_changed(path: Path, content: bytes) -> None:
    """A 0600 file with ``content``, left alone (a read-only mount of one too) when it already has it."""
    if not path.exists() or path.read_bytes() != content:
        write_private(path, content)


def publish_certificates(source: TlsFiles, folder: Path) -> TlsFiles:
    """``source``'s CA certificate and server certificate and key, not the CA's key, in ``folder`` (0700,
    files 0600, rewritten only when they changed): whoever reads them can verify and serve, not sign."""
    published = TlsFiles(private_folder(folder))
    for original, copy in ((source.ca_cert, published.ca_cert), (source.server_cert, published.server_cert),
                           (source.server_key, published.server_key), (source.trust_bundle, published.trust_bundle)):
        _write_if_changed(copy, original.read_bytes())
    return published


def platform_hosts(settings: PlatformSettings) -> tuple[str, ...]:
    """The names the platform's server certificate carries: ``DEFAULT_HOSTS`` and ``BIND_HOST``."""
    return (*DEFAULT_HOSTS, settings.bind_host)


def platform_certificates(settings: PlatformSettings) -> TlsFiles:
    """The certificates every server of the stack shows: in ``STATE_DIR/tls/``, naming ``BIND_HOST`` too."""
    return ensure_certificates(tls_files(settings).folder, platform_hosts(settings))


def client_context(settings: PlatformSettings, with_certificate: bool = False) -> ssl.SSLContext | None:
    """How a client of the stack's own TLS servers verifies them: against ``ca.crt`` (None in plaintext);
    ``with_certificate`` also shows the platform's certificate, for servers that want a client's."""
    if not settings.secure:
        return None
    files = tls_files(settings)
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    if with_certificate:
        context.load_cert_chain(files.server_cert, files.server_key)
    return context


def java_key_stores(settings: PlatformSettings, password_file: Path) -> tuple[Path, Path]:
    """The platform's server key and certificate as a Java key store (``tls/server.p12``) and its CA as a
    trust store (``tls/ca-trust.p12``), both PKCS12 under the password in ``password_file``, 0600, made again
    when the server certificate is newer. The trust store comes from ``keytool``: Java trusts a PKCS12
    certificate only with its own trusted-key-usage attribute, which other writers do not set."""
    files = platform_certificates(settings)
    key_store, trust_store = files.folder / "server.p12", files.folder / "ca-trust.p12"
    issued = files.server_cert.stat().st_mtime
    if all(path.exists() and path.stat().st_mtime >= issued for path in (key_store, trust_store)):
        return key_store, trust_store
    password = password_file.read_text().strip().encode()
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    write_private(key_store, pkcs12.serialize_key_and_certificates(
        b"platform-server", key, cert, [ca_cert], serialization.BestAvailableEncryption(password)))
    trust_store.unlink(missing_ok=True)
    result = subprocess.run(["keytool", "-importcert", "-noprompt", "-alias", "platform-ca",
                             "-file", str(files.ca_cert), "-keystore", str(trust_store), "-storetype", "PKCS12",
                             "-storepass:file", str(password_file)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"keytool could not make {trust_store}: {(result.stdout + result.stderr).strip()}")
    trust_store.chmod(0o600)
    return key_store, trust_store
