"""The fleet's small PKI: one CA, device/relay client certificates, broker server certificates.

Mosquitto authenticates every client by its certificate (``require_certificate
true``) and takes the certificate's CN as the MQTT username
(``use_identity_as_username true``); the broker's dynamic security plugin then
scopes a device to ``slm/<CN>/...`` (:mod:`cloud_relay.authz`). So the CN *is* the
authorization identity, and this module guards it:

* device CNs are device ids, validated as topic segments by
  :class:`edge_slm.topics.DeviceTopics` (no ``/ + # $``, not empty), and may
  not start with ``relay-``, the prefix reserved for relay identities, which
  the broker grants fleet-wide rights;
* a CN is issued at most once while its certificate is valid: two live
  certificates with one CN would be one identity on two machines;
* every key (the CA's too) is created with ``O_CREAT | O_EXCL`` and mode 0600,
  so it is never readable by others, not even for the instant between a
  create and a ``chmod``; keys are never printed or logged.

Layout of the PKI directory::

    ca.crt  ca.key  crl.pem  dynamic-security.json  index.json
    devices/<id>.crt|.key   relays/<name>.crt|.key   servers/<host>.crt|.key

``dynamic-security.json`` is the cloud broker's authorization: a client entry
per device and relay holding a valid certificate (:func:`cloud_relay.authz.dynsec_config`),
rewritten on every issue and revoke. Install it on the broker and restart
mosquitto for a change to apply (the 2.0 plugin does not re-read it on SIGHUP).

``crl.pem`` is written by ``init-ca`` (mosquitto refuses to start with a
missing ``crlfile``) and rewritten on every ``revoke``. It carries a
``nextUpdate``: OpenSSL rejects *every* client once the broker's loaded CRL has
expired, so refresh it (``pki crl``) well within ``--crl-days`` and make the
broker load it again: mosquitto 2.0 re-reads it on SIGHUP (see
``deploy/mosquitto/cloud.conf``).

Keys are EC P-256 with ECDSA/SHA-256: supported by every TLS 1.2 and 1.3 stack
mosquitto and paho link against (Ed25519 certificates are not, e.g. in older
OpenSSL 1.1.0 builds or in TLS 1.2 clients without RFC 8422 support).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_relay import authz
from edge_slm.topics import DeviceTopics

__all__ = [
    "RELAY_PREFIX",
    "CertKind",
    "Issued",
    "Pki",
    "PkiError",
    "issued_json",
]

RELAY_PREFIX = "relay-"
_INDEX = "index.json"
_CA_CERT = "ca.crt"
_CA_KEY = "ca.key"
_CRL = "crl.pem"
_DYNSEC = "dynamic-security.json"
_MAX_CN = 64  # RFC 5280 ub-common-name
# Relay names become broker usernames and dynamic-security client entries; keep them
# to characters that need no quoting anywhere.
_RELAY_RE = re.compile(r"relay-[A-Za-z0-9._-]{1,58}")
_HOST_RE = re.compile(
    r"[A-Za-z0-9*]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)


class PkiError(Exception):
    """A PKI operation was refused; the message says why (never contains key material)."""


class CertKind(StrEnum):
    CA = "ca"
    DEVICE = "device"
    RELAY = "relay"
    SERVER = "server"

    @property
    def folder(self) -> str:
        return f"{self.value}s"


@dataclass(frozen=True, slots=True)
class Issued:
    """One row of ``index.json``: what was issued, never the key itself."""

    cn: str
    serial: str  # lowercase hex, no separators (``openssl x509 -serial`` prints it upper case)
    kind: CertKind
    not_before: str  # ISO 8601, UTC
    not_after: str
    cert: str  # path relative to the PKI directory
    key: str | None
    revoked_at: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: dt.datetime) -> bool:
        return dt.datetime.fromisoformat(self.not_after) <= now


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """The CA signs certificates and CRLs only; a leaf (ECDHE-ECDSA) only signs the handshake."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _serial_hex(serial: int) -> str:
    return format(serial, "x")


def validate_device_id(device_id: str) -> str:
    """A device id usable as certificate CN, MQTT username and topic segment."""
    try:
        DeviceTopics("slm", device_id)
    except ValueError as exc:
        raise PkiError(str(exc)) from None
    if device_id.startswith(RELAY_PREFIX):
        raise PkiError(
            f"device id {device_id!r} starts with {RELAY_PREFIX!r}, which is reserved for relays"
        )
    if (
        len(device_id) > _MAX_CN
        or not device_id.isprintable()
        or any(c.isspace() for c in device_id)
    ):
        raise PkiError(
            f"device id {device_id!r} must be at most {_MAX_CN} printable characters, no spaces"
        )
    return device_id


def validate_relay_name(name: str) -> str:
    if not _RELAY_RE.fullmatch(name):
        raise PkiError(
            f"relay name {name!r} must look like {RELAY_PREFIX}<letters, digits, . _ ->, "
            "e.g. relay-1 (the broker knows relays by this name)"
        )
    return name


def _split_san(values: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for value in values:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            if not _HOST_RE.fullmatch(value) or len(value) > 253:
                raise PkiError(f"{value!r} is neither an IP address nor a DNS name") from None
            names.append(x509.DNSName(value.lower()))
    return names


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` atomically; never overwrite, never follow a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise PkiError(f"{path} already exists; refusing to overwrite it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomically replace a public file (index, CRL): a reader sees the old or new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    _write_new(tmp, data, mode)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Pki:
    """A PKI directory. Every mutating method holds an exclusive lock on it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    # -- paths and state ---------------------------------------------------

    @property
    def ca_cert_path(self) -> Path:
        return self.dir / _CA_CERT

    @property
    def crl_path(self) -> Path:
        return self.dir / _CRL

    @property
    def dynsec_path(self) -> Path:
        """The cloud broker's authorization (``plugin_opt_config_file``)."""
        return self.dir / _DYNSEC

    def cert_path(self, kind: CertKind, cn: str) -> Path:
        return self.dir / kind.folder / f"{cn}.crt"

    def key_path(self, kind: CertKind, cn: str) -> Path:
        return self.dir / kind.folder / f"{cn}.key"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.dir / ".lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load_index(self) -> dict[str, Any]:
        path = self.dir / _INDEX
        if not path.exists():
            raise PkiError(f"{self.dir} holds no CA; run `pki init-ca --dir {self.dir}` first")
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def _save_index(self, data: dict[str, Any]) -> None:
        _replace(self.dir / _INDEX, (json.dumps(data, indent=2) + "\n").encode())

    def entries(self) -> list[Issued]:
        rows = self._load_index()["issued"]
        return [Issued(**{**row, "kind": CertKind(row["kind"])}) for row in rows]

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        key = serialization.load_pem_private_key((self.dir / _CA_KEY).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("the CA key is not an EC key")
        return cert, key

    # -- operations --------------------------------------------------------

    def init_ca(self, name: str = "edge-slm fleet CA", days: int = 3650) -> Issued:
        """Create the directory (0700), the CA key and certificate, an empty CRL."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (self.dir / _INDEX).exists() or (self.dir / _CA_KEY).exists():
            raise PkiError(f"{self.dir} already holds a CA")
        with self._locked():
            key = ec.generate_private_key(ec.SECP256R1())
            now = _now()
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
            ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
            cert = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=days))
                # pathlen 0: this CA signs leaves only, never a sub-CA.
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    _key_usage(ca=True),
                    critical=True,
                )
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256())
            )
            _write_new(self.dir / _CA_KEY, _key_pem(key), 0o600)
            _write_new(self.ca_cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            row = self._row(CertKind.CA, name, cert, _CA_CERT, _CA_KEY)
            self._save_index({"crl_number": 0, "issued": [issued_json(row)]})
            self._write_crl(days=30)
            self._write_dynsec()
            return row

    def issue(
        self,
        kind: CertKind,
        cn: str,
        *,
        days: int = 365,
        san: Sequence[str] = (),
        not_before: dt.datetime | None = None,
    ) -> Issued:
        """Issue a leaf certificate and key for ``cn``.

        ``not_before`` lets tests backdate a certificate (e.g. an already
        expired one); the CLI never sets it.
        """
        if kind is CertKind.DEVICE:
            validate_device_id(cn)
        elif kind is CertKind.RELAY:
            validate_relay_name(cn)
        elif kind is CertKind.SERVER:
            if not san:
                san = [cn]
            _split_san([cn])
        else:
            raise PkiError("use init_ca for the CA")
        if days < 1:
            raise PkiError("--days must be at least 1")
        general_names = _split_san(san)
        with self._locked():
            now = _now()
            for row in self.entries():
                if row.cn == cn and not row.revoked and not row.expired(now):
                    raise PkiError(
                        f"{cn!r} already has a valid {row.kind} certificate (serial {row.serial}); "
                        "revoke it first"
                    )
            ca_cert, ca_key = self._ca()
            key = ec.generate_private_key(ec.SECP256R1())
            start = not_before or now - dt.timedelta(minutes=5)
            eku = (
                ExtendedKeyUsageOID.SERVER_AUTH
                if kind is CertKind.SERVER
                else (ExtendedKeyUsageOID.CLIENT_AUTH)
            )
            builder = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(ca_cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(start + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    # ECDHE-ECDSA: the key only signs the handshake.
                    _key_usage(ca=False),
                    critical=True,
                )
                # A client certificate cannot serve as a broker and vice versa:
                # OpenSSL checks the EKU against the role ("ssl_client" purpose).
                .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                    critical=False,
                )
            )
            if general_names:
                builder = builder.add_extension(
                    x509.SubjectAlternativeName(general_names), critical=False
                )
            cert = builder.sign(ca_key, hashes.SHA256())
            (self.dir / kind.folder).mkdir(mode=0o700, exist_ok=True)
            key_path, cert_path = self.key_path(kind, cn), self.cert_path(kind, cn)
            for stale in (key_path, cert_path):
                # Files of a revoked or expired certificate of the same CN: its
                # index row keeps the serial; the files make way for the new pair.
                if stale.exists():
                    self._retire(stale)
            _write_new(key_path, _key_pem(key), 0o600)
            _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            row = self._row(
                kind,
                cn,
                cert,
                str(cert_path.relative_to(self.dir)),
                str(key_path.relative_to(self.dir)),
            )
            data = self._load_index()
            data["issued"].append(issued_json(row))
            self._save_index(data)
            self._write_dynsec()
            return row

    def _retire(self, path: Path) -> None:
        if path.suffix == ".key":
            path.unlink()  # the key of a dead certificate is of no further use
        else:
            path.rename(path.with_name(f"{path.stem}.{int(_now().timestamp())}.old.crt"))

    def find(self, ref: str) -> Issued:
        """The certificate named by CN (the newest one) or by serial (hex, ``0x`` optional)."""
        entries = [e for e in self.entries() if e.kind is not CertKind.CA]
        by_cn = [e for e in entries if e.cn == ref]
        wanted = ref.lower().removeprefix("0x").replace(":", "")
        by_serial = [e for e in entries if e.serial == wanted]
        if by_cn and by_serial and by_cn[-1] != by_serial[0]:
            raise PkiError(f"{ref!r} is both a CN and a serial; pass the serial with 0x")
        if by_cn:
            live = [e for e in by_cn if not e.revoked]
            return (live or by_cn)[-1]
        if by_serial:
            return by_serial[0]
        raise PkiError(f"no certificate with CN or serial {ref!r}")

    def revoke(self, ref: str, *, crl_days: int = 30) -> Issued:
        """Revoke by CN or serial and rewrite ``crl.pem`` at once."""
        with self._locked():
            target = self.find(ref)
            if target.revoked:
                raise PkiError(f"{target.cn} (serial {target.serial}) is already revoked")
            if target.key:
                # The operator's copy of a dead key is of no further use.
                (self.dir / target.key).unlink(missing_ok=True)
            data = self._load_index()
            for row in data["issued"]:
                if row["serial"] == target.serial:
                    row["revoked_at"] = _now().isoformat()
                    row["key"] = None
            self._save_index(data)
            self._write_crl(days=crl_days)
            self._write_dynsec()
            return self.find(target.serial)

    def write_crl(self, *, days: int = 30) -> Path:
        with self._locked():
            return self._write_crl(days=days)

    def _write_crl(self, *, days: int) -> Path:
        data = self._load_index()
        data["crl_number"] = int(data.get("crl_number", 0)) + 1
        ca_cert, ca_key = self._ca()
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now)
            .next_update(now + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(data["crl_number"]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        for row in data["issued"]:
            if row["revoked_at"]:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(row["serial"], 16))
                    .revocation_date(dt.datetime.fromisoformat(row["revoked_at"]))
                    .build()
                )
        crl = builder.sign(ca_key, hashes.SHA256())
        _replace(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        self._save_index(data)
        return self.crl_path

    def write_dynsec(self, *, prefix: str | None = None, share_group: str | None = None) -> Path:
        """Rewrite ``dynamic-security.json``; a given topic prefix or share group is kept
        in the index for every later rewrite (defaults: those of the agent and relay)."""
        with self._locked():
            if prefix is not None or share_group is not None:
                data = self._load_index()
                settings = data.setdefault("broker", {})
                if prefix is not None:
                    settings["topic_prefix"] = prefix
                if share_group is not None:
                    settings["share_group"] = share_group
                # Validate before saving: a bad value must not stick in the index.
                authz.dynsec_json([], [], **_broker_settings(data))
                self._save_index(data)
            return self._write_dynsec()

    def _write_dynsec(self) -> Path:
        """A client entry per CN with a valid (neither revoked nor expired) certificate."""
        now = _now()
        live = [e for e in self.entries() if not e.revoked and not e.expired(now)]
        text = authz.dynsec_json(
            (e.cn for e in live if e.kind is CertKind.DEVICE),
            (e.cn for e in live if e.kind is CertKind.RELAY),
            **_broker_settings(self._load_index()),
        )
        _replace(self.dynsec_path, text.encode())
        return self.dynsec_path

    def _row(
        self, kind: CertKind, cn: str, cert: x509.Certificate, cert_rel: str, key_rel: str
    ) -> Issued:
        return Issued(
            cn=cn,
            serial=_serial_hex(cert.serial_number),
            kind=kind,
            not_before=cert.not_valid_before_utc.isoformat(),
            not_after=cert.not_valid_after_utc.isoformat(),
            cert=cert_rel,
            key=key_rel,
        )


def _broker_settings(index: dict[str, Any]) -> dict[str, str]:
    settings = index.get("broker", {})
    return {
        "prefix": settings.get("topic_prefix", authz.DEFAULT_PREFIX),
        "share_group": settings.get("share_group", authz.DEFAULT_SHARE_GROUP),
    }


def issued_json(row: Issued) -> dict[str, Any]:
    """One ``index.json`` row (and one ``pki list --json`` line)."""
    out = asdict(row)
    out["kind"] = row.kind.value
    return out
