"""Fixtures shared by the test modules."""

from __future__ import annotations

import http.server
import threading

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every model in the tests is tiny: one intra-op thread runs it fastest, and on a busy
    machine (CI, two cores) spinning OpenMP threads cost far more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Server:
    """Loopback HTTP server with Range support; `cut[path] = n` sends only n bytes of the first
    response for `path`, then closes the connection."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                byte_range = self.headers.get("Range")
                server.requests.append((self.path, byte_range))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(byte_range.removeprefix("bytes=").rstrip("-")) if byte_range else 0
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                limit = server.cut.pop(self.path, None)
                self.wfile.write(body[start:] if limit is None else body[start:start + limit])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()
