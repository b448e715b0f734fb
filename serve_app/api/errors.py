"""The service's error taxonomy and the one place that maps it to HTTP status codes and JSON bodies."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("serve_app.api.errors")


class ServiceError(Exception):
    status_code = 500
    code = "backend_failure"
    headers: dict[str, str] = {}

    def __init__(self, message: str, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(ServiceError):
    status_code, code = 422, "invalid_input"


class TooLarge(ServiceError):
    status_code, code = 413, "too_large"


class Overloaded(ServiceError):
    """Back-pressure: the queues are full. The status is 429 or 503 (`limits.overload_status`) and
    Retry-After the seconds the queued work needs at the measured service rate."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1, status_code: int = 429) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.headers = {"Retry-After": str(retry_after_s)}


class NotReady(ServiceError):
    status_code, code = 503, "not_ready"
    headers = {"Retry-After": "5"}


class Timeout(ServiceError):
    status_code, code = 504, "timeout"


class BackendFailure(ServiceError):
    status_code, code = 500, "backend_failure"


#: What a 500 says: never the exception's own text.
INTERNAL_MESSAGE = "the model failed to process the request; it was logged with this request id"


def error_response(status: int, code: str, message: str, state: dict | None = None,
                   details: list[dict] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body. `state` is the request's scope state: its request id goes in the body, and the
    code is left there for the request's metrics and log (serve_app/api/context.py)."""
    request_id = None
    if state is not None:
        state["error_code"] = code
        request_id = state.get("request_id")
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    if details:
        body["error"]["details"] = details
    # X-Request-Id is added by the app's RequestContext (or Ray's HTTP server), for every response alike.
    return JSONResponse(status_code=status, content=body, headers=headers)


def _state(request: Request) -> dict:
    return request.scope.setdefault("state", {})


def _validation_details(exc: RequestValidationError) -> tuple[str, list[dict]]:
    details = []
    for err in exc.errors():
        location = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        details.append({"field": location, "problem": err.get("msg", "invalid"), "type": err.get("type")})
    if any(d["type"] == "json_invalid" for d in details):
        return "request body is not valid JSON", details
    if any(d["type"] == "missing" or d["field"] == "body" for d in details):
        return "request body must be a JSON object with a 'text' field", details
    return "'text' must be a string or a list of strings", details


def service_error_response(exc: ServiceError, state: dict | None) -> JSONResponse:
    """The response for one of the taxonomy's errors; a backend failure is logged and answered with a fixed message."""
    message = exc.message
    if isinstance(exc, BackendFailure):
        logger.error("request %s failed: %s", (state or {}).get("request_id"), exc.message, exc_info=exc.__cause__)
        message = INTERNAL_MESSAGE
    return error_response(exc.status_code, exc.code, message, state, exc.details, exc.headers)


def unexpected_error_response(state: dict | None) -> JSONResponse:
    """A 500 for an exception outside the taxonomy: logged with its traceback (call from an except block), never echoed."""
    logger.exception("request %s failed unexpectedly", (state or {}).get("request_id"))
    return error_response(500, "backend_failure", INTERNAL_MESSAGE, state)


#: Starlette's own HTTP errors, by status: 413 is the body limit's (serve_app/api/body_limit.py).
HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return service_error_response(exc, _state(request))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        message, details = _validation_details(exc)
        return error_response(422, "invalid_input", message, _state(request), details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI's "error parsing the body": undecodable bytes, JSON nested past the
            # recursion limit, integers past Python's digit limit. Malformed JSON is 422, as documented.
            return error_response(422, "invalid_input", "request body is not valid JSON", _state(request))
        code = HTTP_ERROR_CODES.get(exc.status_code, "invalid_input")
        return error_response(exc.status_code, code, str(exc.detail), _state(request), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return unexpected_error_response(_state(request))
