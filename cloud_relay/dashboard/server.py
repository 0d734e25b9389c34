"""Run the dashboard under uvicorn, on the store the relay settings name (read-only)."""

from __future__ import annotations

import signal

from cloud_relay.config import RelaySettings
from cloud_relay.dashboard.app import create_app
from cloud_relay.dashboard.auth import Auth
from cloud_relay.store import open_store
from edge_slm.logs import get_logger
from edge_slm.settings import is_loopback

log = get_logger("cloud_relay.dashboard")


def auth_from(settings: RelaySettings) -> Auth:
    d = settings.dashboard
    return Auth(
        token=d.token.get_secret_value() if d.token else None,
        username=d.username,
        password=d.password.get_secret_value() if d.password else None,
    )


def serve(settings: RelaySettings) -> int:
    """Serve until SIGINT/SIGTERM; raises StoreError when the store cannot be read."""
    import uvicorn

    d = settings.dashboard
    store = open_store(settings.db, read_only=True)
    try:
        auth = auth_from(settings)
        app = create_app(
            store,
            auth=auth,
            refresh_s=d.refresh_s,
            stale_after_s=settings.fleet.stale_after_s,
            max_page_size=d.max_page_size,
        )
        if not auth.enabled and not is_loopback(d.host):
            log.warning("dashboard_open_to_network", host=d.host, hint="set dashboard.token")
        config = uvicorn.Config(
            app,
            host=d.host,
            port=d.port,
            log_config=None,  # keep our structlog pipeline
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal
        # with the previous handlers: these make that a clean exit (as `edge-agent serve`).
        stopped_by: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, _frame: stopped_by.append(signum))
        log.info("dashboard_starting", url=f"http://{d.host}:{d.port}/", auth=auth.mode)
        server.run()
        log.info("dashboard_exit", signal=stopped_by[0] if stopped_by else None)
        return 0 if server.started else 1
    finally:
        store.close()
