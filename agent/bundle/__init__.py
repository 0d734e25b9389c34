"""``edge-agent bundle``: one offline artifact for a device, built on a workstation.

A bundle is a tar of a wheelhouse for the target (its platform and Python), the
project's own wheel, built models with their manifests, the board profile table,
the systemd unit and ``deploy/install-device.sh``, and ``SHA256SUMS`` over every
other file. ``install-device.sh --bundle FILE`` checks the sums before it changes
anything, then installs with ``pip --no-index``: no network on the device.

:mod:`agent.bundle.build` and :mod:`agent.bundle.wheels` are the library;
:mod:`agent.bundle.cli` only parses arguments, so the device's ``edge-agent run``
never imports the workstation side.
"""

from __future__ import annotations


class BundleError(Exception):
    """The bundle cannot be made (missing model, no wheel for the target, ...)."""


__all__ = ["BundleError"]
