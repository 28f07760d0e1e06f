"""Who may talk to the page: its own address only, its own origin only, and only with the per-launch token.

A page on 127.0.0.1 is still reachable from every tab of the user's browser. A foreign page can rename itself to
127.0.0.1 (DNS rebinding: its requests then carry `Host: evil.example`) or post across origins (CSRF), and the
page starts training runs from YAML it is sent (`trust_remote_code: true` is code execution). So, as Jupyter
does, every request must name one of the page's own addresses in `Host`, carry no foreign `Origin`, and show the
token printed in the URL at launch (`?token=...`, kept afterwards in a SameSite=Strict cookie). The check is a
plain ASGI middleware around the FastAPI app Gradio is mounted in (`gr.mount_gradio_app`), so no route of
Gradio's, present or future, is reached without it, and the parent app's own strict CORS policy replaces
Gradio's (Gradio defers to a parent's `CORSMiddleware`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # bound to every interface: the names it is reached by are not known
TOKEN_PARAM = "token"


def new_token() -> str:
    """A fresh per-launch token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass
class Access:
    """What a request must show: one of `hosts` as its Host (None: any, for a wildcard bind), an Origin of one of
    them (or none), and the token."""

    token: str
    port: int
    hosts: set[str] | None = field(default=None)
    https_hosts: set[str] = field(default_factory=set)  # a share link's host, reached over https

    @classmethod
    def for_bind(cls, host: str, port: int, token: str) -> Access:
        """The addresses a page bound to HOST:PORT answers to: HOST:PORT, localhost:PORT and 127.0.0.1:PORT."""
        if host in WILDCARD_HOSTS:
            return cls(token, port, None)
        bound = f"[{host}]" if ":" in host else host
        return cls(token, port, {f"{name}:{port}".lower() for name in (bound, "localhost", "127.0.0.1")})

    @property
    def cookie(self) -> str:
        # cookies do not keep ports apart: two pages on one machine must not overwrite each other's token
        return f"sftkit-webui-token-{self.port}"

    def host_allowed(self, host: str) -> bool:
        host = host.lower()
        return self.hosts is None or host in self.hosts or host in self.https_hosts

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Same origin only: the Origin is the scheme and address the request was sent to (its allowed Host)."""
        parts = urlsplit(origin.lower())
        scheme = "https" if host.lower() in self.https_hosts else "http"
        return parts.scheme == scheme and parts.netloc == host.lower() and self.host_allowed(parts.netloc)

    def token_shown(self, headers: Headers, query: dict[str, str]) -> tuple[bool, bool]:
        """(the token is valid, it came in the query: set the cookie)."""
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed Cookie header is no token
            cookie = SimpleCookie()
        for value, from_query in (
            (query.get(TOKEN_PARAM), True),
            (headers.get("x-sftkit-token"), False),
            (cookie[self.cookie].value if self.cookie in cookie else None, False),
        ):
            if value and secrets.compare_digest(value.encode(), self.token.encode()):
                return True, from_query
        return False, False


class Guard:
    """ASGI middleware: refuses (403, one line) a request whose Host, Origin or token is not the page's."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        headers = Headers(scope=scope)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        refusal = self.refusal(headers, query)
        if refusal is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": refusal[:120]})
                return
            await PlainTextResponse(refusal + "\n", status_code=403)(scope, receive, send)
            return
        _, from_query = self.access.token_shown(headers, query)
        if scope["type"] == "http" and from_query and scope["method"] in ("GET", "HEAD"):
            # as Jupyter: the token moves from the address bar into a cookie only this origin sends
            rest = urlencode([(k, v) for k, v in query.items() if k != TOKEN_PARAM])
            response = RedirectResponse(
                scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else ""), status_code=303
            )
            response.set_cookie(self.access.cookie, self.access.token, httponly=True, samesite="strict", path="/")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, headers: Headers, query: dict[str, str]) -> str | None:
        """Why the request is refused, or None."""
        host = headers.get("host", "")
        if not self.access.host_allowed(host):
            names = ", ".join(sorted(self.access.hosts or ()))
            return f"refused: Host {host!r} is not this page's address ({names})"
        origin = headers.get("origin")
        if origin is not None and not self.access.origin_allowed(origin, host):
            return f"refused: a request from another site (Origin {origin!r}) may not use this page"
        if not self.access.token_shown(headers, query)[0]:
            return (
                "refused: no valid token: open the address `sftkit webui` printed (it ends in ?token=...), "
                "or send the header X-Sftkit-Token"
            )
        return None


def guarded_app(page: Any, access: Access, **mount: Any) -> Any:
    """A FastAPI app serving `page` (a queued gr.Blocks) at /, behind `Guard` and a same-origin CORS policy."""
    import gradio as gr
    from fastapi import FastAPI
    from starlette.middleware.cors import CORSMiddleware

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    origins = sorted({f"http://{h}" for h in access.hosts or ()} | {f"https://{h}" for h in access.https_hosts})
    # a CORS policy of the parent app's own makes Gradio leave out its permissive one (it echoes any Origin
    # to a non-local Host, with credentials); this one allows the page's own origins and nothing else
    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_credentials=False)
    app.add_middleware(Guard, access=access)  # added last: outermost, so it runs before CORS and every route
    return gr.mount_gradio_app(app, page, path="/", **mount)
