"""The FastAPI app every ingress serves (serving/ingress.py, serving/ingress_v2.py declare their
routes on it) and its error handlers: a RequestError is its status and message as JSON, a bug is
a 500 with a request id to quote, never the exception's text."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelfoundry.serving.requests import RequestError
from modelfoundry.serving.verbs import request_id

log = logging.getLogger("ray.serve")


# the docs page and the schema are the Ingress's own routes below (behind its Host check and keys;
# Swagger UI's files served from the package, no CDN)
app = FastAPI(
    title="modelfoundry model service",
    description="KServe v1 / TF-Serving style REST API",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


@app.exception_handler(RequestError)
async def _request_error(_: Request, err: RequestError) -> JSONResponse:
    return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)


@app.exception_handler(Exception)
async def _unexpected(_: Request, err: Exception) -> JSONResponse:
    # a bug, not a bad request: logged with its traceback and the request id; the client gets the
    # id to quote, never the exception's text
    rid = request_id()
    log.error("request %s failed", rid, exc_info=err)
    return JSONResponse({"error": f"internal error (request id {rid})"}, status_code=500)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)
