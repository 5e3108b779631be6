"""The demo page the ingress serves at `/`: static files shipped in the package (web/), no build
step and nothing from a CDN. The HTML is given the app's route prefix, so the page and its calls
to the REST API work under any prefix."""

from __future__ import annotations

from pathlib import Path

from modelfoundry.serving.requests import RequestError

WEB = Path(__file__).parent / "web"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}


def _read(name: str) -> str:
    return (WEB / name).read_text(encoding="utf-8")


def index(root_path: str) -> str:
    """index.html for an app mounted at `root_path` ("" at the root, "/digits" under a prefix)."""
    return _read("index.html").replace("__BASE__", root_path.rstrip("/") + "/")


def asset(name: str) -> tuple[str, str]:
    """(text, media type) of one of the page's files; 404 for any other name."""
    if name not in ASSETS:
        raise RequestError(404, f"no such file {name!r}; the page's files are {sorted(ASSETS)}")
    return _read(name), ASSETS[name]


# Swagger UI for /docs, from the swagger-ui-bundle distribution (no CDN on the origin where the
# page keeps an API key): only these files are served
SWAGGER_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


def swagger_asset(name: str) -> tuple[bytes, str]:
    if name not in SWAGGER_ASSETS:
        raise RequestError(404, f"no such file {name!r}; the docs page's files are {sorted(SWAGGER_ASSETS)}")
    from swagger_ui_bundle import swagger_ui_path

    return (Path(swagger_ui_path) / name).read_bytes(), SWAGGER_ASSETS[name]
