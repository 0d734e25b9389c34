"""``cloud-relay pki ...``: the fleet CA's command line over :class:`cloud_relay.pki.Pki`.

Paths and public facts are printed, never a key. ``python -m cloud_relay.pki_cmd``
runs the same commands without the relay's other ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloud_relay import authz
from cloud_relay.pki import CertKind, Issued, Pki, PkiError, issued_json
from edge_slm.console import run_command

__all__ = ["add_pki_command", "main"]


def _dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir",
        type=Path,
        default=os.environ.get("EDGE_SLM_PKI_DIR"),
        required="EDGE_SLM_PKI_DIR" not in os.environ,
        help="PKI directory (default: $EDGE_SLM_PKI_DIR); keep it off the brokers",
    )


def _print_issued(row: Issued, pki: Pki) -> None:
    # Paths and public facts only: never the key.
    print(f"{row.kind} {row.cn}: serial {row.serial}, valid until {row.not_after}")
    print(f"  certificate: {pki.dir / row.cert}")
    if row.key:
        print(f"  key (0600):  {pki.dir / row.key}")


def _cmd_init_ca(args: argparse.Namespace) -> int:
    pki = Pki(args.dir)
    _print_issued(pki.init_ca(args.name, days=args.days), pki)
    print(f"  CRL:         {pki.crl_path}")
    return 0


def _cmd_issue(kind: CertKind) -> Any:
    def run(args: argparse.Namespace) -> int:
        pki = Pki(args.dir)
        san = list(getattr(args, "san", None) or [])
        if kind is CertKind.SERVER:
            san = [args.cn, *san]
        _print_issued(pki.issue(kind, args.cn, days=args.days, san=san), pki)
        if kind is not CertKind.SERVER:
            print(f"  broker authorization updated: {pki.dynsec_path}")
            print("  (install it on the cloud broker and restart mosquitto to admit this client)")
        return 0

    return run


def _cmd_revoke(args: argparse.Namespace) -> int:
    pki = Pki(args.dir)
    row = pki.revoke(args.ref, crl_days=args.crl_days)
    print(f"revoked {row.kind} {row.cn} (serial {row.serial}); CRL written to {pki.crl_path}")
    print("copy crl.pem to the brokers and reload them (SIGHUP) so that they read it;")
    print(f"{pki.dynsec_path.name} no longer lists it: install it and restart to drop it there too")
    return 0


def _cmd_crl(args: argparse.Namespace) -> int:
    pki = Pki(args.dir)
    print(f"CRL written to {pki.write_crl(days=args.crl_days)} (valid {args.crl_days} days)")
    return 0


def _cmd_dynsec(args: argparse.Namespace) -> int:
    pki = Pki(args.dir)
    try:
        path = pki.write_dynsec(prefix=args.topic_prefix, share_group=args.share_group)
    except ValueError as exc:
        raise PkiError(str(exc)) from None
    print(f"broker authorization written to {path}")
    print("install it as the broker's plugin_opt_config_file and restart mosquitto")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.UTC)
    rows = Pki(args.dir).entries()
    if args.json:
        for row in rows:
            print(json.dumps(issued_json(row)))
        return 0
    print(f"{'KIND':<7} {'CN':<28} {'SERIAL':<41} {'NOT AFTER':<26} STATE")
    for row in rows:
        state = "revoked" if row.revoked else "expired" if row.expired(now) else "valid"
        print(f"{row.kind:<7} {row.cn:<28} {row.serial:<41} {row.not_after:<26} {state}")
    return 0


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            code: int = func(args)
        except PkiError as exc:
            print(f"pki: {exc}", file=sys.stderr)
            return 2
        return code

    return run


def add_pki_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pki`` and its sub-commands on an ``add_subparsers()`` object.

    Each leaf sets ``func(args) -> int`` (the exit code), as ``cloud-relay``'s
    other commands do.
    """
    pki: argparse.ArgumentParser = subparsers.add_parser(
        "pki",
        help="the fleet CA: issue and revoke device, relay and broker certificates",
        description=_DESCRIPTION,
    )
    _add_commands(pki)
    return pki


_DESCRIPTION = "Manage the fleet's CA. Keys are written with mode 0600 and never printed."


# kind, command, CN metavar, help, --san help (None: the kind takes no --san).
_ISSUE_COMMANDS: tuple[tuple[CertKind, str, str, str, str | None], ...] = (
    (
        CertKind.DEVICE,
        "issue-device",
        "DEVICE_ID",
        "client certificate, CN = device id",
        "extra subjectAltName (DNS name or IP)",
    ),
    (CertKind.RELAY, "issue-relay", "NAME", "client certificate for a cloud relay (relay-*)", None),
    (
        CertKind.SERVER,
        "issue-server",
        "HOSTNAME",
        "broker certificate, SAN = HOSTNAME and --san",
        "further DNS name or IP the broker answers on",
    ),
)


def _add_commands(pki: argparse.ArgumentParser) -> None:
    sub = pki.add_subparsers(dest="pki_command", required=True)

    p = sub.add_parser("init-ca", help="create the CA key, certificate and an empty CRL")
    _dir_arg(p)
    p.add_argument("--name", default="edge-slm fleet CA", help="CA common name")
    p.add_argument("--days", type=int, default=3650, help="CA validity (default 3650)")
    p.set_defaults(func=_guard(_cmd_init_ca))

    for kind, name, cn, help_, san_help in _ISSUE_COMMANDS:
        p = sub.add_parser(name, help=help_)
        p.add_argument("cn", metavar=cn)
        _dir_arg(p)
        p.add_argument("--days", type=int, default=365, help="validity (default 365)")
        if san_help:
            p.add_argument("--san", action="append", help=san_help)
        p.set_defaults(func=_guard(_cmd_issue(kind)))

    p = sub.add_parser("revoke", help="revoke by CN or serial; rewrites crl.pem")
    p.add_argument("ref", metavar="SERIAL|CN")
    _dir_arg(p)
    p.add_argument("--crl-days", type=int, default=30, help="CRL validity (default 30)")
    p.set_defaults(func=_guard(_cmd_revoke))

    p = sub.add_parser("crl", help="write a fresh crl.pem (run well before it expires)")
    _dir_arg(p)
    p.add_argument("--crl-days", type=int, default=30, help="CRL validity (default 30)")
    p.set_defaults(func=_guard(_cmd_crl))

    p = sub.add_parser(
        "dynsec",
        help="rewrite dynamic-security.json, the cloud broker's authorization "
        "(issue and revoke do so too)",
    )
    _dir_arg(p)
    p.add_argument(
        "--topic-prefix", help=f"MQTT topic prefix, kept (default {authz.DEFAULT_PREFIX})"
    )
    p.add_argument(
        "--share-group",
        help=f"the relays' shared-subscription group, kept (default {authz.DEFAULT_SHARE_GROUP})",
    )
    p.set_defaults(func=_guard(_cmd_dynsec))

    p = sub.add_parser("list", help="issued certificates: kind, CN, serial, not-after, state")
    _dir_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_guard(_cmd_list))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cloud_relay.pki_cmd ...``: the same commands as ``cloud-relay pki ...``."""
    parser = argparse.ArgumentParser(prog="python -m cloud_relay.pki_cmd", description=_DESCRIPTION)
    _add_commands(parser)
    return run_command(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
