"""When a worker keeps retrying a Redis step, and when it gives up."""

from __future__ import annotations

import threading

import pytest
import redis.exceptions as rex

from zoo_serving.serving.retry import is_permanent, until_done


@pytest.mark.parametrize(
    "exc",
    [
        rex.NoPermissionError("NOPERM this user has no permissions to run the 'evalsha' command"),
        rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        rex.NoScriptError("NOSCRIPT No matching script"),
        rex.AuthenticationError("invalid username-password pair"),
        TypeError("a bug of ours"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_redis_will_repeat_are_permanent(exc: Exception) -> None:
    assert is_permanent(exc)


@pytest.mark.parametrize(
    "exc",
    [
        rex.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        rex.TimeoutError("Timeout reading from socket"),
        rex.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
        rex.ReadOnlyError("READONLY You can't write against a read only replica."),
        rex.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_that_pass_are_retried(exc: Exception) -> None:
    assert not is_permanent(exc)


def test_a_permanent_error_is_given_up_on_at_once() -> None:
    calls = []

    def step() -> None:
        calls.append(1)
        raise rex.NoPermissionError("NOPERM no permissions to access one of the keys")

    err = until_done(step, "writing")
    assert isinstance(err, rex.NoPermissionError) and len(calls) == 1


def test_a_passing_error_is_retried_until_the_step_succeeds() -> None:
    calls = []

    def step() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise rex.ConnectionError("Connection refused")

    assert until_done(step, "writing") is None and len(calls) == 3


def test_a_stop_ends_the_retries_after_the_grace() -> None:
    stop = threading.Event()
    stop.set()

    def step() -> None:
        raise rex.ConnectionError("Connection refused")

    err = until_done(step, "writing", stop, grace_s=0.3)
    assert isinstance(err, rex.ConnectionError)
