"""The page's files: package data under ``bridge/console/static``, read once
and served as they are (no build step, nothing from another host).

Every answer carries the same security headers.  The Content-Security-Policy
allows scripts and styles from this origin only (no ``unsafe-inline``, no
``eval``), connections to this origin only (``'self'`` covers ``ws://`` to the
same host and port), no frames, no forms posting elsewhere; the page holds no
inline script or style for it to forbid.  ``Referrer-Policy: no-referrer``
keeps the page's address out of every request it makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from bridge.io.http import Request, Responder, Router

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-cache"),
)

#: URL path -> (file under static/, content type).
FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console/console.css": ("console.css", "text/css; charset=utf-8"),
    "/console/favicon.svg": ("favicon.svg", "image/svg+xml"),
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str

    async def serve(self, _request: Request, responder: Responder) -> None:
        await responder.send(200, self.body, self.content_type, SECURITY_HEADERS)


def load() -> dict[str, Asset]:
    """Every file of the page, read from the installed package."""
    static = resources.files("bridge.console") / "static"
    return {
        path: Asset((static / name).read_bytes(), content_type)
        for path, (name, content_type) in FILES.items()
    }


def page_weight(assets: dict[str, Asset]) -> int:
    """Bytes of HTML, JavaScript and CSS a browser loads for the page."""
    return sum(len(a.body) for a in assets.values() if not a.content_type.startswith("image/"))


def mount(router: Router, assets: dict[str, Asset]) -> None:
    for path, asset in assets.items():
        router.add(path, asset.serve)
