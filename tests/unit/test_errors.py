"""The error tables are complete: every error has one code, a gRPC status and an HTTP status."""

from __future__ import annotations

import inspect
import json

import grpc
import pytest

from orderflow import errors
from orderflow.errors import ERRORS_BY_CODE, OrderflowError, RateLimitedError, error_classes
from orderflow.gateway.errors import HTTP_STATUS_BY_CODE, http_status
from orderflow.gateway.rpc import translate
from orderflow.platform.grpc_errors import ERROR_CODE_KEY, ERROR_DETAILS_KEY, status_for

CLASSES = error_classes()

# What each kind of HTTP status may travel as over gRPC: a refusal the client can act on
# is never sent as a server fault, nor the other way round.
CLIENT_SIDE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SERVER_SIDE = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE}


def instance(cls: type[OrderflowError]) -> OrderflowError:
    if issubclass(cls, RateLimitedError):
        return cls("slow down", retry_after_seconds=3)
    return cls("it went wrong", order_id="o-1")


def ids(cls: type[OrderflowError]) -> str:
    return cls.__name__


def test_the_tree_is_walked_whole() -> None:
    defined = {
        obj
        for _name, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, OrderflowError)
    }
    assert set(CLASSES) == defined
    assert CLASSES[0] is OrderflowError


def test_codes_are_unique() -> None:
    codes = [cls.code for cls in CLASSES]
    assert len(set(codes)) == len(codes), sorted(c for c in codes if codes.count(c) > 1)
    assert {code: cls for code, cls in ERRORS_BY_CODE.items()} == {c.code: c for c in CLASSES}


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
def test_every_error_has_an_http_status_of_its_own(cls: type[OrderflowError]) -> None:
    assert cls.code in HTTP_STATUS_BY_CODE, f"{cls.code} would fall to 500"
    status = http_status(cls.code)
    if cls is OrderflowError:
        assert status == 500
    else:
        assert 400 <= status < 600 and status != 500


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
def test_every_error_has_a_grpc_status_that_agrees_with_its_http_status(
    cls: type[OrderflowError],
) -> None:
    status = status_for(instance(cls))
    if cls is OrderflowError:
        assert status == grpc.StatusCode.INTERNAL
        return
    assert status in CLIENT_SIDE | SERVER_SIDE - {grpc.StatusCode.INTERNAL}
    if http_status(cls.code) < 500:
        assert status in CLIENT_SIDE, (cls.code, status)
    else:
        assert status in SERVER_SIDE, (cls.code, status)


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
def test_the_docstring_tree_names_every_error_and_its_code(cls: type[OrderflowError]) -> None:
    assert errors.__doc__ is not None
    lines = [line.split() for line in errors.__doc__.splitlines()]
    assert any(cls.__name__ in words and cls.code in words for words in lines)


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
def test_a_client_rebuilds_the_error_a_service_sent(cls: type[OrderflowError]) -> None:
    sent = instance(cls)
    failed = grpc.aio.AioRpcError(
        status_for(sent),
        grpc.aio.Metadata(),
        grpc.aio.Metadata(
            (ERROR_CODE_KEY, sent.code),
            (ERROR_DETAILS_KEY, json.dumps(sent.details)),
        ),
        details=sent.message,
    )
    got = translate(failed, "orders")
    if status_for(sent) == grpc.StatusCode.UNAVAILABLE:
        # No answer and an answer "I could not reach mine" look alike: it may have acted.
        assert got.code == "SERVICE_UNAVAILABLE"
    elif cls is OrderflowError:
        assert got.code == "UPSTREAM_ERROR"  # an unnamed failure upstream is not ours
    else:
        assert type(got) is cls
        assert (got.message, got.details) == (sent.message, sent.details)
