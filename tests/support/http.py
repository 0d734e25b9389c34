"""A small HTTP file server on a free loopback port, for download and OTA tests."""

from __future__ import annotations

import functools
import hashlib
import http.server
import tarfile
import threading
from pathlib import Path
from types import TracebackType


class FileServer:
    """Serves ``root`` on 127.0.0.1 from a background thread; counts GETs by path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gets: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.gets.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        handler = functools.partial(Handler, directory=str(root))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FileServer:
        return self

    def __exit__(
        self,
        _t: type[BaseException] | None,
        _e: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tar_folder(folder: Path, archive: Path, arcname: str | None = None) -> Path:
    """Pack ``folder`` (as ``arcname``/, default its own name) into an uncompressed tar."""
    with tarfile.open(archive, "w") as tf:
        tf.add(folder, arcname=arcname if arcname is not None else folder.name)
    return archive
