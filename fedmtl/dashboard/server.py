"""The dashboard's web server: FastAPI on uvicorn, read-only, loopback unless told otherwise.

Routes (GET only): `/` the page, `/static/*` its script and style, `/static/plotly.min.js` the
plotting library as shipped inside the `plotly` Python package (no CDN: the page works with no
network), and `/api/run?since=R` the run's state (fedmtl/dashboard/state.py).

Safety, since a run's metrics and client names are private to its owner:
  * bound to 127.0.0.1 by default; any other address needs a token (`--token`, or the
    FEDMTL_DASHBOARD_TOKEN environment variable), refused otherwise;
  * with a token every request must carry it: `?token=` once (the page then keeps it in an
    HttpOnly, SameSite=Strict cookie), or `Authorization: Bearer`;
  * on loopback, requests must name a loopback host (no DNS-rebinding reads from web pages);
  * no write routes, no docs/OpenAPI routes; a strict Content-Security-Policy (scripts only
    from this server), no referrer (the token never leaks in a Referer header).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from fedmtl.dashboard.state import RunWatcher

TOKEN_ENV = "FEDMTL_DASHBOARD_TOKEN"
COOKIE = "fedmtl_dashboard_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
STATIC = Path(__file__).resolve().parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class DashboardError(ValueError):
    """The dashboard cannot start as asked (missing package, address, token)."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a Host header without its port ('[::1]:8765' -> '[::1]')."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0]


def plotly_js() -> Path:
    """plotly.min.js as shipped in the `plotly` pip package (the `dashboard` extra)."""
    try:
        path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    except ModuleNotFoundError:
        raise DashboardError("the dashboard needs the 'plotly' package for its charts: "
                             "pip install 'fedmtl[dashboard]' (or: pip install plotly)") from None
    if not path.is_file():
        raise DashboardError(f"the installed plotly package has no {path.name} at {path}; reinstall plotly")
    return path


def create_app(run_dir: str | Path, token: str | None = None, host: str = "127.0.0.1", poll_ms: int = 2000) -> Any:
    """The FastAPI app serving one run folder."""
    from fastapi import FastAPI, Request
    from fastapi.responses import (
        FileResponse,
        JSONResponse,
        PlainTextResponse,
        Response,
    )

    watcher = RunWatcher(run_dir)
    js = plotly_js()
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, title="fedmtl dashboard")
    allowed_hosts = LOOPBACK_NAMES + (host,) if is_loopback(host) else None

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("read-only dashboard", status_code=405)
        if allowed_hosts is not None and host_name(request.headers.get("host") or "") not in allowed_hosts:
            return PlainTextResponse("unknown host", status_code=400)
        set_cookie = False
        if token:
            given = request.query_params.get("token") or request.cookies.get(COOKIE) or ""
            auth = request.headers.get("authorization") or ""
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                return PlainTextResponse("this dashboard needs its token: open the URL with ?token=...", status_code=401)
            set_cookie = request.query_params.get("token") is not None
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        if set_cookie:
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.get("/")
    def index() -> Response:
        html = (STATIC / "index.html").read_text().replace("{{POLL_MS}}", str(int(poll_ms)))
        return Response(html, media_type="text/html; charset=utf-8")

    @app.get("/static/plotly.min.js")
    def plotly() -> FileResponse:
        return FileResponse(js, media_type="text/javascript")

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        files = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
        if name not in files:
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(STATIC / name, media_type=files[name])

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/run")
    def run_state(since: int = -1) -> JSONResponse:
        try:
            return JSONResponse(watcher.payload(since))
        except Exception as exc:  # noqa: BLE001 - say what is wrong on the page, keep serving
            return JSONResponse({"run": None, "rounds": [], "error": f"{type(exc).__name__}: {exc}"}, status_code=500)

    return app


def resolve_token(host: str, token: str | None) -> str | None:
    """The token to require: given, or from FEDMTL_DASHBOARD_TOKEN; refused when missing off loopback."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(host) and not token:
        raise DashboardError(
            f"the dashboard binds to {host}, which is not a loopback address: give it a token "
            f"(--token T or {TOKEN_ENV}=T; e.g. T=$(python -c 'import secrets; print(secrets.token_urlsafe(24))'))")
    if token is not None and len(token) < 8:
        raise DashboardError("the dashboard token must be at least 8 characters")
    return token


class DashboardServer:
    """uvicorn in a daemon thread, on a socket bound up front (port 0 = a free one), so the URL is
    known before `start()` returns and a busy port fails at once."""

    def __init__(self, run_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                 poll_ms: int = 2000) -> None:
        import uvicorn

        self.run_dir = Path(run_dir)
        self.host = host
        self.token = resolve_token(host, token)
        app = create_app(self.run_dir, self.token, host, poll_ms)
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host.strip("[]"), port))
        except OSError as exc:
            self.sock.close()
            raise DashboardError(f"the dashboard cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="none",
                                                        timeout_graceful_shutdown=2))
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else (f"[{self.host.strip('[]')}]" if ":" in self.host else self.host)
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> DashboardServer:
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="fedmtl-dashboard", daemon=True)
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until Ctrl-C / SIGTERM (uvicorn handles them)."""
        self.server.run(sockets=[self.sock])

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
        self.sock.close()
