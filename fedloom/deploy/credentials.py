"""The files a secured deployment needs: a CA, a TLS server certificate, SuperNode keys.

- **TLS** (:func:`make_tls_files`): a private certificate authority and a server
  certificate it signs for the SuperLink. The SuperLink serves with the certificate and
  key; every SuperNode (and ``flwr`` CLI user) trusts the CA certificate. The server
  certificate names, as *subject alternative names*, every address clients dial
  (``IP:10.0.0.5``, ``DNS:superlink.example.org``) plus ``127.0.0.1``/``localhost``,
  which the SuperLink's own ServerApp process dials. Clients check the name they dial
  against these entries; a certificate without the right SAN is refused.
- **SuperNode authentication** (:func:`make_node_key`): an ECDSA P-384 key pair per
  site in OpenSSH format (what ``ssh-keygen -t ecdsa -b 384`` writes). The site keeps
  the private key (``flower-supernode --auth-supernode-private-key``); the server
  admin registers the public one (``flwr supernode register key.pub``); a SuperLink
  started with ``--enable-supernode-auth`` refuses every other node.

Command line (``python -m fedloom.deploy.credentials``)::

    tls DIR [--dns NAME]... [--ip ADDRESS]... [--days N]   # ca.crt, server.pem, server.key
    node-key PATH                                          # PATH (private), PATH.pub

The CA made here is for test and private federations; with a CA your organisation
runs, use its certificates instead (the SuperLink needs PEM files only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TlsFiles", "make_node_key", "make_tls_files", "main"]


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files :func:`make_tls_files` wrote.

    ``ca_certificate`` goes to every client (``--root-certificates``), the others stay
    on the server (``--ssl-ca-certfile``, ``--ssl-certfile``, ``--ssl-keyfile``).
    """

    ca_certificate: Path
    server_certificate: Path
    server_key: Path


def make_tls_files(
    directory: str | Path,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = 365,
) -> TlsFiles:
    """Write ``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key`` into ``directory``.

    The server certificate's subject alternative names are ``dns_names`` + ``localhost``
    and ``ip_addresses`` + ``127.0.0.1``. Keys are ECDSA P-256, readable by the owner
    only. Existing files are overwritten.

    Raises:
        ValueError: an entry of ``ip_addresses`` is not an IP address.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    try:
        ips = [ipaddress.ip_address(a) for a in dict.fromkeys([*ip_addresses, "127.0.0.1"])]
    except ValueError as err:
        raise ValueError(
            f"{err}: give --ip an IP address such as 10.0.0.5, and host names with --dns."
        ) from None
    names = list(dict.fromkeys([*dns_names, "localhost"]))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedloom federation CA")])
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(x509, signing_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    alternative_names = [x509.DNSName(n) for n in names] + [x509.IPAddress(i) for i in ips]
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(x509, signing_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    _write(files.ca_certificate, _certificate_pem(ca_certificate), private=False)
    _write(directory / "ca.key", _private_pem(ca_key), private=True)
    _write(files.server_certificate, _certificate_pem(server_certificate), private=False)
    _write(files.server_key, _private_pem(server_key), private=True)
    return files


def make_node_key(path: str | Path) -> tuple[Path, Path]:
    """Write a SuperNode's ECDSA P-384 key pair: ``path`` (private, OpenSSH format,
    owner-only) and ``path.pub``; return both paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private = Path(path)
    public = private.with_name(private.name + ".pub")
    private.parent.mkdir(parents=True, exist_ok=True)
    _write(private, key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption()), private=True)
    _write(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH) + b"\n",
           private=False)
    return private, public


def _key_usage(x509, *, signing_certificates: bool):
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=not signing_certificates,
        key_cert_sign=signing_certificates, crl_sign=signing_certificates,
        encipher_only=False, decipher_only=False,
    )


def _certificate_pem(certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return certificate.public_bytes(serialization.Encoding.PEM)


def _private_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, content: bytes, *, private: bool) -> None:
    """Write ``content``; a private key is created owner-only (0600) from the start."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedloom.deploy.credentials tls|node-key ...`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m fedloom.deploy.credentials",
        description="Make the TLS files of a SuperLink or the key pair of a SuperNode.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    tls = commands.add_parser("tls", help="a CA and a SuperLink server certificate")
    tls.add_argument("directory", type=Path)
    tls.add_argument("--dns", action="append", default=[], metavar="NAME",
                     help="a host name SuperNodes dial (repeat for several)")
    tls.add_argument("--ip", action="append", default=[], metavar="ADDRESS",
                     help="an IP address SuperNodes dial (repeat for several)")
    tls.add_argument("--days", type=int, default=365, help="validity (default 365)")
    node_key = commands.add_parser("node-key", help="a SuperNode authentication key pair")
    node_key.add_argument("path", type=Path, help="private key file; PATH.pub is the public one")
    args = parser.parse_args(argv)
    if args.command == "tls":
        try:
            files = make_tls_files(args.directory, dns_names=args.dns, ip_addresses=args.ip,
                                   days=args.days)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"CA certificate (give to every SuperNode): {files.ca_certificate}\n"
              f"server certificate and key (SuperLink only): {files.server_certificate} "
              f"{files.server_key}")
    else:
        private, public = make_node_key(args.path)
        print(f"private key (stays on the site): {private}\n"
              f"public key (send to the server admin to register): {public}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
