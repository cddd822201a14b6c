"""Every failure leaves the router as OpenAI's error body, with OpenAI's status codes:

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

Request validation is a 400 here (FastAPI's default is 422, which OpenAI clients do not
expect), and nothing unexpected ever sends a traceback to the client.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.router.backend import BackendError

log = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """A request the router refuses, with everything its error body says."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_
        self.param, self.code = param, code


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(err: APIError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = error_body(err.message, err.type, err.param, err.code)
    return JSONResponse(body, status_code=err.status, headers=headers)


def from_backend(err: BackendError) -> APIError:
    return APIError(err.status, err.message, err.type)


def install_error_handlers(app: FastAPI) -> None:
    for kind, handler in _HANDLERS:
        app.add_exception_handler(kind, handler)
    app.add_exception_handler(Exception, _on_unexpected)


async def error_response_for(request: Request, err: Exception) -> JSONResponse:
    """What the handlers FastAPI runs answer `err` with, for a path served outside its
    routing (fast_routes.py): the same body for the same failure, whichever way it came."""
    for kind, handler in _HANDLERS:
        if isinstance(err, kind):
            return await handler(request, err)
    # With no ServerErrorMiddleware behind it to log the traceback, it is logged here.
    log.error("unexpected %s while serving a request", type(err).__name__, exc_info=err)
    return _server_error()


async def _on_api_error(_: Request, err: APIError) -> JSONResponse:
    return error_response(err)


async def _on_backend_error(_: Request, err: BackendError) -> JSONResponse:
    retry = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s is not None else None
    return error_response(from_backend(err), headers=retry)


async def _on_validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and "json" not in content_type:
        # FastAPI reads only JSON-typed bodies; curl -d sends a form type unless told.
        message = "Send the body as JSON, with the header 'Content-Type: application/json'."
        return error_response(APIError(400, message))
    return error_response(validation_error(err.errors()))


async def _on_http_exception(request: Request, err: StarletteHTTPException) -> JSONResponse:
    """Routing failures: unknown paths (404) and wrong methods (405, with its Allow header)."""
    where = f"{request.method} {request.url.path}"
    if err.status_code == 404:
        message = f"Invalid URL ({where})"
    elif err.status_code == 405:
        message = f"Method not allowed ({where})"
    else:
        message = str(err.detail)
    return error_response(APIError(err.status_code, message), headers=err.headers)


async def _on_unexpected(_: Request, err: Exception) -> JSONResponse:
    # Starlette logs the traceback after this response is sent; the client sees none of it.
    log.error("unexpected %s while serving a request", type(err).__name__)
    return _server_error()


def _server_error() -> JSONResponse:
    return error_response(APIError(500, "The server had an error.", SERVER_ERROR))


_HANDLERS: tuple[tuple[type[Exception], Any], ...] = (
    (APIError, _on_api_error),
    (BackendError, _on_backend_error),
    (RequestValidationError, _on_validation_error),
    (StarletteHTTPException, _on_http_exception),
)


# ---- pydantic errors -> one OpenAI error ---------------------------------------------------
def validation_error(errors: Sequence[Any]) -> APIError:
    """The first problem pydantic found (`_most_telling`), named by the field path OpenAI
    calls `param`."""
    first = _most_telling(errors)
    loc = _body_loc(first)
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return APIError(400, f"We could not parse the JSON body of your request. ({detail})")
    param = field_path(loc)
    if first.get("type") == "missing":
        if not param:
            return APIError(400, "The request has no JSON body.")
        return APIError(400, f"Missing required parameter: '{param}'.", param=param)
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if not param:
        return APIError(400, f"Invalid request body: {msg}.")
    return APIError(400, f"Invalid value for '{param}': {msg}.", param=param)


# A value that fits no member of a union is reported once per member; members of another
# type only say so ("Input should be a valid string" for ["", "x"] against str | list[str]).
_TYPE_MISMATCH = {
    "string_type", "int_type", "float_type", "bool_type", "list_type", "dict_type",
    "model_type", "model_attributes_type", "none_required",
}  # fmt: skip


def _most_telling(errors: Sequence[Any]) -> dict[str, Any]:
    """The first error, or, when its field fails a union, the member whose type matched:
    that one says what is wrong with the value."""
    if not errors:
        return {"loc": (), "msg": "invalid", "type": ""}
    first: dict[str, Any] = errors[0]
    if first.get("type") not in _TYPE_MISMATCH:
        return first
    path = field_path(_body_loc(first))
    for e in errors:
        if e.get("type") not in _TYPE_MISMATCH and field_path(_body_loc(e)) == path:
            return dict(e)
    return first


def _body_loc(error: dict[str, Any]) -> list[str | int]:
    loc = list(error.get("loc", ()))
    return loc[1:] if loc[:1] == ["body"] else loc


_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
# pydantic names each member of a union in the error location ("str", "list[int]", ...);
# a member's name is where the field path ends.
_UNION_TAGS = {"str", "int", "float", "bool", "none", "list", "dict"}


def field_path(loc: Sequence[str | int]) -> str:
    """('messages', 0, 'content') -> 'messages[0].content'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _FIELD.fullmatch(part) and part not in _UNION_TAGS:
            path += f".{part}" if path else part
        else:
            break
    return path
