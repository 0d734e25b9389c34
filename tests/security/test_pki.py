"""``cloud_relay.pki`` and ``pki_cmd``: key hygiene, chains, CN rules, revocation, quiet CLI."""

from __future__ import annotations

import datetime as dt
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_relay.pki import CertKind, Pki, PkiError
from cloud_relay.pki_cmd import main


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    p = Pki(tmp_path / "pki")
    p.init_ca("unit CA")
    return p


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_0600_and_dirs_0700(pki: Pki) -> None:
    pki.issue(CertKind.DEVICE, "dev-1")
    pki.issue(CertKind.RELAY, "relay-1")
    pki.issue(CertKind.SERVER, "broker.example.com", san=["broker.example.com", "10.0.0.5"])
    keys = sorted(pki.dir.rglob("*.key"))
    assert len(keys) == 4  # CA, device, relay, server
    assert all(_mode(k) == 0o600 for k in keys), {k.name: oct(_mode(k)) for k in keys}
    assert _mode(pki.dir) == 0o700
    assert all(_mode(d) == 0o700 for d in pki.dir.iterdir() if d.is_dir())


def test_device_cert_chains_to_ca_with_cn_and_client_auth(pki: Pki) -> None:
    row = pki.issue(CertKind.DEVICE, "dev-1")
    ca, cert = _load(pki.ca_cert_path), _load(pki.dir / row.cert)
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert format(cert.serial_number, "x") == row.serial
    # openssl agrees on the chain
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki.ca_cert_path), str(pki.dir / row.cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr


def test_server_cert_has_san_and_server_auth(pki: Pki) -> None:
    row = pki.issue(CertKind.SERVER, "broker.example.com", san=["broker.example.com", "10.0.0.5"])
    cert = _load(pki.dir / row.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example.com"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_revoke_puts_serial_in_crl(pki: Pki) -> None:
    row = pki.issue(CertKind.DEVICE, "dev-1")
    keep = pki.issue(CertKind.DEVICE, "dev-2")
    pki.revoke("dev-1")
    crl = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
    ca_key = _load(pki.ca_cert_path).public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(ca_key)
    assert crl.get_revoked_certificate_by_serial_number(int(row.serial, 16)) is not None
    assert crl.get_revoked_certificate_by_serial_number(int(keep.serial, 16)) is None
    assert not (pki.dir / "devices" / "dev-1.key").exists()  # a dead key is deleted
    # and by serial; the CRL number grows with each CRL
    before = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    pki.revoke(keep.serial)
    crl = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(keep.serial, 16)) is not None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > before
    assert [e.revoked for e in pki.entries()] == [False, True, True]


def test_one_live_certificate_per_cn(pki: Pki) -> None:
    pki.issue(CertKind.DEVICE, "dev-1")
    with pytest.raises(PkiError, match="already has a valid"):
        pki.issue(CertKind.DEVICE, "dev-1")
    pki.revoke("dev-1")
    row = pki.issue(CertKind.DEVICE, "dev-1")  # re-issue after revocation
    assert pki.find("dev-1").serial == row.serial


@pytest.mark.parametrize(
    "device_id", ["", "a/b", "a+b", "a#", "#", "+", "$SYS", "relay-1", "dev 1", "x" * 65, "a\x00"]
)
def test_invalid_device_ids_rejected(pki: Pki, device_id: str) -> None:
    with pytest.raises(PkiError):
        pki.issue(CertKind.DEVICE, device_id)
    assert not list((pki.dir).glob("devices/*"))


@pytest.mark.parametrize("name", ["dev-1", "relay-", "relay-a/b", "relay-#", "relay-a b"])
def test_invalid_relay_names_rejected(pki: Pki, name: str) -> None:
    with pytest.raises(PkiError):
        pki.issue(CertKind.RELAY, name)


def test_existing_key_is_never_overwritten(pki: Pki) -> None:
    with pytest.raises(PkiError, match="already holds a CA"):
        pki.init_ca()


def test_cli_prints_no_secrets(tmp_path: Path) -> None:
    d = str(tmp_path / "cli")
    steps = [
        ["init-ca", "--dir", d, "--name", "cli CA"],
        ["issue-device", "dev-1", "--dir", d],
        ["issue-relay", "relay-1", "--dir", d],
        ["issue-server", "localhost", "--dir", d, "--san", "127.0.0.1"],
        ["list", "--dir", d],
        ["list", "--dir", d, "--json"],
        ["revoke", "dev-1", "--dir", d],
        ["crl", "--dir", d],
        ["issue-device", "bad/id", "--dir", d],
    ]
    outputs = []
    for argv in steps:
        out = subprocess.run(
            [sys.executable, "-m", "cloud_relay.pki_cmd", *argv],
            capture_output=True,
            text=True,
            check=False,
        )
        outputs.append(out.stdout + out.stderr)
        assert out.returncode == (2 if "bad/id" in argv else 0), out.stderr
    text = "\n".join(outputs)
    assert "PRIVATE KEY" not in text
    assert "BEGIN" not in text
    for key in Path(d).rglob("*.key"):  # no line of any key body either
        body = [ln for ln in key.read_text().splitlines() if ln and "-----" not in ln]
        assert not any(ln in text for ln in body)
    assert "revoked" in outputs[6]
    assert "relay-1" in outputs[4]


def test_cli_in_process_returns_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path / "p")
    assert main(["init-ca", "--dir", d]) == 0
    assert main(["revoke", "nobody", "--dir", d]) == 2
    captured = capsys.readouterr()
    assert "no certificate" in captured.err
    assert "PRIVATE KEY" not in captured.out + captured.err


def _dynsec_users(pki: Pki) -> dict[str, list[str]]:
    doc = json.loads(pki.dynsec_path.read_text())
    return {c["username"]: [r["rolename"] for r in c["roles"]] for c in doc["clients"]}


def test_broker_authorization_follows_issue_and_revoke(pki: Pki) -> None:
    """dynamic-security.json lists exactly the devices and relays with a valid certificate."""
    assert _dynsec_users(pki) == {}  # written by init-ca: the broker starts with it
    pki.issue(CertKind.DEVICE, "dev-1")
    pki.issue(CertKind.DEVICE, "dev-2")
    pki.issue(CertKind.RELAY, "relay-1")
    pki.issue(CertKind.SERVER, "broker.example.com")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    pki.issue(CertKind.DEVICE, "dev-old", days=1, not_before=past)
    assert _dynsec_users(pki) == {
        "dev-1": ["device-dev-1"],
        "dev-2": ["device-dev-2"],
        "relay-1": ["relay"],
    }
    pki.revoke("dev-1")
    assert set(_dynsec_users(pki)) == {"dev-2", "relay-1"}
    pki.issue(CertKind.DEVICE, "dev-1")  # re-issued: admitted again
    assert set(_dynsec_users(pki)) == {"dev-1", "dev-2", "relay-1"}
    assert _mode(pki.dynsec_path) == 0o644  # no secrets in it: no passwords, no keys


def test_dynsec_command_keeps_prefix_and_group(tmp_path: Path) -> None:
    d = tmp_path / "p"
    assert main(["init-ca", "--dir", str(d)]) == 0
    assert main(["dynsec", "--dir", str(d), "--topic-prefix", "fleet", "--share-group", "g"]) == 0
    assert main(["dynsec", "--dir", str(d), "--share-group", "bad/group"]) == 2
    assert main(["issue-relay", "relay-1", "--dir", str(d)]) == 0  # rewrites with the kept ones
    text = Pki(d).dynsec_path.read_text()
    assert '"$share/g/fleet/+/escalation"' in text
    assert "slm/" not in text
