"""Redis AUTH (requirepass, ACL user) and TLS on both the server and the client.

Each test starts its own redis-server on a free loopback port: one with ``requirepass``, one
whose only user is an ACL user, one that listens on a TLS port only (certificates made here with
the ``openssl`` CLI). Correct credentials serve end to end, compared with onnxruntime's own
output; wrong ones fail with :class:`BrokerConnectionError` and change nothing in Redis.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import build_onnx_cnn, jpeg
from helpers import assert_top_n, onnx_direct, plain_config, zoo_serve
from zoo_serving import BrokerConnectionError, InputQueue, OutputQueue, Server, keys
from zoo_serving.broker.embedded import find_redis_server, free_port, port_answers
from zoo_serving.errors import BrokerPermissionError, ConfigError
from zoo_serving.wire.native import VIEW_MIN_BYTES

PASSWORD = "s3cret-Pw-7f2c"
WRONG = "not-the-password-91d"
ACL_USER = "zoo"
START_TIMEOUT_S = 10.0


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """``start_redis(*args, tls=False)`` -> the port of a new redis-server on 127.0.0.1.

    With ``tls`` the plain port is off and the returned port speaks TLS only. Every server is
    killed and reaped after the test.
    """
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, tls: bool = False) -> int:
        port = free_port()
        ports = ["--port", "0", "--tls-port", str(port)] if tls else ["--port", str(port)]
        log_file = tmp_path / f"redis-{port}.log"
        proc = subprocess.Popen(
            [
                find_redis_server(),
                *ports,
                "--bind",
                "127.0.0.1",
                "--dir",
                str(tmp_path),
                "--logfile",
                str(log_file),
                "--save",
                "",
                "--appendonly",
                "no",
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_answers("127.0.0.1", port, 0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_file.read_text(errors="replace") if log_file.exists() else ""
                pytest.fail(f"redis-server {' '.join(args)} did not start:\n{tail[-2000:]}")
            time.sleep(0.02)
        return port

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def stream() -> str:
    return f"sec-{uuid.uuid4().hex[:10]}"


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A test CA, a server certificate (IP 127.0.0.1, DNS localhost) and a client certificate,
    all signed by that CA: paths by name (ca, server_crt, server_key, client_crt, client_key)."""
    d = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.crt", "-days", "2",
        "-subj", "/CN=zoo-serving test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    usages = {
        "server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for who, usage in usages.items():
        ext = d / f"{who}.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\n"
            f"authorityKeyIdentifier=keyid\n{usage}"
        )
        _openssl("req", "-new", *ec, "-keyout", d / f"{who}.key", "-out", d / f"{who}.csr",
                 "-subj", f"/CN=zoo-serving test {who}")  # fmt: skip
        _openssl("x509", "-req", "-in", d / f"{who}.csr", "-CA", d / "ca.crt",
                 "-CAkey", d / "ca.key", "-CAcreateserial", "-days", "2",
                 "-extfile", ext, "-out", d / f"{who}.crt")  # fmt: skip
    return {
        "ca": str(d / "ca.crt"),
        "server_crt": str(d / "server.crt"),
        "server_key": str(d / "server.key"),
        "client_crt": str(d / "client.crt"),
        "client_key": str(d / "client.key"),
    }


def _tls_args(certs: dict[str, str], auth_clients: bool) -> tuple[str, ...]:
    return (
        "--tls-cert-file", certs["server_crt"],
        "--tls-key-file", certs["server_key"],
        "--tls-ca-cert-file", certs["ca"],
        "--tls-auth-clients", "yes" if auth_clients else "no",
    )  # fmt: skip


def _tls_data(certs: dict[str, str], port: int, stream: str) -> dict[str, Any]:
    """The ``data`` section for the TLS server with the client certificate."""
    return {
        "src": f"rediss://127.0.0.1:{port}",
        "stream": stream,
        "tls_ca": certs["ca"],
        "tls_cert": certs["client_crt"],
        "tls_key": certs["client_key"],
    }


def _server_config(model_dir: Path, tmp_path: Path, **data: Any) -> dict[str, Any]:
    return {
        "model": {"path": str(model_dir)},
        "data": {"shape": "3,32,32", **data},
        "params": {"batch_size": 4, "top_n": 3},
        "log": {"dir": str(tmp_path / "work")},
    }


@contextlib.contextmanager
def _serving(config: dict[str, Any]) -> Iterator[Server]:
    """A started Server (bounded wait for its workers), stopped on exit."""
    server = Server(config).start(timeout_s=30)
    try:
        yield server
    finally:
        server.stop()
    assert not server.running


def _admin(url: str, **options: Any) -> Any:
    """A plain redis-py client, to look at Redis behind zoo_serving's back."""
    import redis

    return redis.Redis.from_url(url, **options)


def _assert_serves(queue: InputQueue, model_dir: Path, seed: int) -> None:
    """Predict a batch through ``queue`` and compare with onnxruntime on the same tensors."""
    xs = np.random.default_rng(seed).normal(0, 50, (3, 3, 32, 32)).astype(np.float32)
    served = queue.predict(list(xs), timeout=20)
    for answer, scores in zip(served, onnx_direct(model_dir, xs), strict=True):
        assert_top_n(answer, scores, 3)


def _assert_refused(exc: pytest.ExceptionInfo[BrokerConnectionError], *secrets: str) -> None:
    message = str(exc.value)
    assert "refused the login" in message
    for secret in secrets:
        assert secret not in message
        assert secret not in repr(exc.value.details)


def _wait_for_key(admin: Any, key: bytes, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not admin.exists(key):
        assert time.monotonic() < deadline, f"{key!r} not written within {timeout_s}s"
        time.sleep(0.02)


# ------------------------------------------------------------------ requirepass


def test_requirepass_password_from_config_and_url_serves(
    start_redis, onnx_model_dir, tmp_path, stream
) -> None:
    port = start_redis("--requirepass", PASSWORD)
    url = f"redis://127.0.0.1:{port}"
    config = _server_config(onnx_model_dir, tmp_path, src=url, stream=stream, password=PASSWORD)
    with _serving(config):
        with InputQueue(url=url, name=stream, password=PASSWORD) as queue:
            _assert_serves(queue, onnx_model_dir, seed=1)
        with InputQueue(url=f"redis://:{PASSWORD}@127.0.0.1:{port}", name=stream) as queue:
            _assert_serves(queue, onnx_model_dir, seed=2)
        data = {"src": url, "stream": stream, "password": PASSWORD}
        with InputQueue(config={"data": data}) as queue:
            _assert_serves(queue, onnx_model_dir, seed=3)


def test_requirepass_wrong_or_missing_password_is_refused_and_reads_nothing(
    start_redis, onnx_model_dir, tmp_path, stream
) -> None:
    port = start_redis("--requirepass", PASSWORD)
    url = f"redis://127.0.0.1:{port}"
    config = _server_config(onnx_model_dir, tmp_path, src=url, stream=stream, password=PASSWORD)
    admin = _admin(url, password=PASSWORD)
    try:
        with _serving(config):
            x = np.random.default_rng(4).normal(0, 50, (3, 32, 32)).astype(np.float32)
            with InputQueue(url=url, name=stream, password=PASSWORD) as queue:
                queue.enqueue("kept", t=x)
            result_key = keys.result(stream, "kept")
            _wait_for_key(admin, result_key)
            before = admin.dbsize()

            attempts: list[Callable[[], Any]] = [
                lambda: OutputQueue(url=url, name=stream, password=WRONG),
                lambda: OutputQueue(url=f"redis://:{WRONG}@127.0.0.1:{port}", name=stream),
                lambda: OutputQueue(config={"data": {"src": url, "password": WRONG}}),
                lambda: OutputQueue(url=url, name=stream),  # no password at all
            ]
            for attempt in attempts:
                with pytest.raises(BrokerConnectionError) as exc:
                    attempt()
                _assert_refused(exc, WRONG, PASSWORD)
                assert f"127.0.0.1:{port}" in str(exc.value)

            # the refused clients took nothing: the result is still there for the right one
            assert admin.dbsize() == before and admin.exists(result_key)
            with OutputQueue(url=url, name=stream, password=PASSWORD) as output:
                answer = output.query("kept", timeout=5)
            assert_top_n(answer, onnx_direct(onnx_model_dir, x[None])[0], 3)
    finally:
        admin.close()


@pytest.mark.parametrize("password", [WRONG, None], ids=["wrong-password", "no-password"])
def test_server_with_bad_password_fails_at_start(
    start_redis, onnx_model_dir, tmp_path, stream, password
) -> None:
    port = start_redis("--requirepass", PASSWORD)
    url = f"redis://127.0.0.1:{port}"
    config = _server_config(onnx_model_dir, tmp_path, src=url, stream=stream, password=password)
    server = Server(config)
    with pytest.raises(BrokerConnectionError) as exc:
        server.start(timeout_s=30)
    _assert_refused(exc, WRONG, PASSWORD)
    assert server.runner is None and not server.running
    admin = _admin(url, password=PASSWORD)
    try:
        assert admin.dbsize() == 0  # no stream, no group, no heartbeat
    finally:
        admin.close()


# ------------------------------------------------------------------ ACL user


ACL_ARGS = ("--user", "default", "off", "--user", ACL_USER, "on", f">{PASSWORD}", "~*", "&*",
            "+@all")  # fmt: skip


@pytest.mark.parametrize("credentials_in", ["config", "url"])
def test_acl_user_serves_end_to_end(
    start_redis, onnx_model_dir, tmp_path, stream, credentials_in
) -> None:
    port = start_redis(*ACL_ARGS)
    if credentials_in == "config":
        data = {"src": f"127.0.0.1:{port}", "username": ACL_USER, "password": PASSWORD}
    else:
        data = {"src": f"redis://{ACL_USER}:{PASSWORD}@127.0.0.1:{port}"}
    config = _server_config(onnx_model_dir, tmp_path, stream=stream, **data)
    with _serving(config):
        url = f"redis://{ACL_USER}:{PASSWORD}@127.0.0.1:{port}"
        with InputQueue(url=url, name=stream) as queue:
            _assert_serves(queue, onnx_model_dir, seed=5)
            # every connection, the workers' included, is logged in as the ACL user
            users = {c["user"] for c in queue.db.client_list()}
            assert users == {ACL_USER}
        client_data = {"src": f"redis://127.0.0.1:{port}", "stream": stream,
                       "username": ACL_USER, "password": PASSWORD}  # fmt: skip
        with InputQueue(config={"data": client_data}) as queue:
            _assert_serves(queue, onnx_model_dir, seed=6)


def test_acl_wrong_credentials_are_refused(start_redis, onnx_model_dir, tmp_path, stream) -> None:
    port = start_redis(*ACL_ARGS)
    bad_urls = [
        f"redis://{ACL_USER}:{WRONG}@127.0.0.1:{port}",  # wrong password
        f"redis://:{PASSWORD}@127.0.0.1:{port}",  # right password, default user (off)
        f"redis://nobody:{PASSWORD}@127.0.0.1:{port}",  # unknown user
    ]
    for url in bad_urls:
        with pytest.raises(BrokerConnectionError) as exc:
            InputQueue(url=url, name=stream)
        _assert_refused(exc, WRONG, PASSWORD)
    src = f"127.0.0.1:{port}"
    config = _server_config(
        onnx_model_dir, tmp_path, src=src, stream=stream, username=ACL_USER, password=WRONG
    )
    with pytest.raises(BrokerConnectionError) as exc:
        Server(config).start(timeout_s=30)
    _assert_refused(exc, WRONG, PASSWORD)
    admin = _admin(f"redis://{ACL_USER}:{PASSWORD}@127.0.0.1:{port}")
    try:
        assert admin.dbsize() == 0
    finally:
        admin.close()


# ------------------------------------------------------------------ TLS


def test_tls_with_client_certificates_serves_end_to_end(
    start_redis, certs, onnx_model_dir, tmp_path, stream
) -> None:
    port = start_redis(*_tls_args(certs, auth_clients=True), tls=True)
    data = _tls_data(certs, port, stream)
    with _serving(_server_config(onnx_model_dir, tmp_path, **data)):
        with InputQueue(config={"data": data}) as queue:
            _assert_serves(queue, onnx_model_dir, seed=7)
        # the URL names the host (checked against the certificate's DNS name); files from config
        url = f"rediss://localhost:{port}"
        with InputQueue(url=url, config={"data": data}) as queue:
            _assert_serves(queue, onnx_model_dir, seed=8)


def test_plain_tcp_to_the_tls_port_fails_and_reads_nothing(start_redis, certs, stream) -> None:
    port = start_redis(*_tls_args(certs, auth_clients=True), tls=True)
    data = _tls_data(certs, port, stream)
    with InputQueue(config={"data": data}) as queue:
        queue.enqueue("waiting", t=np.zeros((3, 32, 32), np.float32))
        length = queue.db.xlen(stream)
        assert length == 1
        stored = queue.db.dbsize()  # the stream and the producer's number

        started = time.monotonic()
        with pytest.raises(BrokerConnectionError) as exc:
            InputQueue(url=f"redis://127.0.0.1:{port}", name=stream)
        assert time.monotonic() - started < 5.0
        assert f"redis://127.0.0.1:{port}" in str(exc.value)
        assert "use a rediss:// URL" in str(exc.value)

        # the same with the TLS files set: they do not turn a redis:// URL into TLS
        started = time.monotonic()
        with pytest.raises(BrokerConnectionError):
            OutputQueue(
                config={"data": {**data, "src": f"redis://127.0.0.1:{port}"}},
                socket_connect_timeout=2,
                socket_timeout=2,
            )
        assert time.monotonic() - started < 5.0

        assert queue.db.xlen(stream) == length
        assert queue.db.dbsize() == stored


def test_tls_client_to_a_plain_port_fails_in_bounded_time(start_redis, certs, stream) -> None:
    port = start_redis()
    data = {**_tls_data(certs, port, stream), "src": f"rediss://127.0.0.1:{port}"}
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError) as exc:
        InputQueue(config={"data": data}, socket_connect_timeout=1, socket_timeout=1)
    assert time.monotonic() - started < 4.0
    assert f"rediss://127.0.0.1:{port}" in str(exc.value)


def test_tls_client_without_certificate_or_ca_is_rejected(start_redis, certs, stream) -> None:
    port = start_redis(*_tls_args(certs, auth_clients=True), tls=True)
    data = _tls_data(certs, port, stream)
    no_client_cert = {k: v for k, v in data.items() if k not in ("tls_cert", "tls_key")}
    no_ca = {k: v for k, v in data.items() if k != "tls_ca"}
    for partial in (no_client_cert, no_ca):
        started = time.monotonic()
        with pytest.raises(BrokerConnectionError) as exc:
            InputQueue(config={"data": partial})
        assert time.monotonic() - started < 5.0
        assert f"rediss://127.0.0.1:{port}" in str(exc.value)
        assert "TLS handshake failed" in str(exc.value)
    with InputQueue(config={"data": data}) as queue:
        assert queue.db.dbsize() == 0


def test_tls_server_authentication_only(
    start_redis, certs, onnx_model_dir, tmp_path, stream
) -> None:
    """With ``--tls-auth-clients no`` the CA alone is enough, and it is still required: a
    client that does not trust the server's CA is refused."""
    port = start_redis(*_tls_args(certs, auth_clients=False), tls=True)
    data = {"src": f"rediss://127.0.0.1:{port}", "stream": stream, "tls_ca": certs["ca"]}
    with _serving(_server_config(onnx_model_dir, tmp_path, **data)):
        with InputQueue(config={"data": data}) as queue:
            _assert_serves(queue, onnx_model_dir, seed=9)
            assert queue.db.exists(keys.ready(stream))
        with pytest.raises(BrokerConnectionError):
            InputQueue(url=f"rediss://127.0.0.1:{port}", name=stream)


# ------------------------------------------------------------------ unix socket


def test_serves_over_a_unix_socket(
    start_redis: Callable[..., int], tmp_path: Path, stream: str
) -> None:
    """``data.src: unix:///path`` works for the server and the clients, with a password; the
    records are large enough (108 KB) to go from the arrays' buffers straight to the socket."""
    model_dir = tmp_path / "cnn96"
    build_onnx_cnn(model_dir / "model.onnx", size=96)
    sock = tmp_path / "redis.sock"
    start_redis("--unixsocket", str(sock), "--unixsocketperm", "700", "--requirepass", PASSWORD)
    url = f"unix://{sock}"
    config = _server_config(model_dir, tmp_path, src=url, stream=stream, password=PASSWORD)
    xs = np.random.default_rng(7).normal(0, 50, (5, 3, 96, 96)).astype(np.float32)
    assert xs[0].nbytes >= VIEW_MIN_BYTES
    with _serving(config), InputQueue(url=url, name=stream, password=PASSWORD) as queue:
        served = queue.predict(list(xs), timeout=20)
        served.append(queue.predict(xs[0], timeout=20))
    expected = onnx_direct(model_dir, np.concatenate([xs, xs[:1]]))
    for answer, scores in zip(served, expected, strict=True):
        assert_top_n(answer, scores, 3)


# ------------------------------------------------------------------ ACL user lacking a command


@pytest.mark.parametrize(
    ("rule", "named", "grant"),
    [
        ("-evalsha", "EVALSHA", "+evalsha"),
        ("-xclaim", "XCLAIM", "+xclaim"),
        ("-script|load", "SCRIPT LOAD", "+script|load"),
        ("-xack", "XACK", "+xack"),  # run inside the complete script, so checked apart
    ],
)
def test_a_user_lacking_a_command_fails_start_naming_it(
    start_redis, onnx_model_dir, tmp_path, stream, rule, named, grant
) -> None:
    port = start_redis(*ACL_ARGS[:-1], "+@all", rule)
    data = {"src": f"127.0.0.1:{port}", "username": ACL_USER, "password": PASSWORD}
    server = Server(_server_config(onnx_model_dir, tmp_path, stream=stream, **data))
    with pytest.raises(BrokerPermissionError) as exc:
        server.start(timeout_s=60)
    message = str(exc.value)
    assert named in message and grant in message and f"ACL SETUSER {ACL_USER}" in message
    assert exc.value.code == "broker_permission"
    assert server.runner is None and not server.running
    admin = _admin(f"redis://{ACL_USER}:{PASSWORD}@127.0.0.1:{port}")
    try:
        assert not admin.exists(stream)  # checked before anything was created
    finally:
        admin.close()


def test_a_user_lacking_a_key_fails_start_naming_it(
    start_redis, onnx_model_dir, tmp_path, stream
) -> None:
    # the stream itself, but none of the server's own keys
    port = start_redis("--user", "default", "off", "--user", ACL_USER, "on", f">{PASSWORD}",
                       f"~{stream}", "&*", "+@all")  # fmt: skip
    data = {"src": f"127.0.0.1:{port}", "username": ACL_USER, "password": PASSWORD}
    with pytest.raises(BrokerPermissionError) as exc:
        Server(_server_config(onnx_model_dir, tmp_path, stream=stream, **data)).start(timeout_s=60)
    assert f"~zs:{{{stream}}}:*" in str(exc.value)


def test_a_result_the_user_may_not_write_holds_up_no_other_and_ends_dead_lettered(
    start_redis, onnx_model_dir, tmp_path, stream
) -> None:
    # the user may use the stream and the server's keys, not the seed-era result hashes
    # (result:<uri>): a seed-era record's result write is refused for good (NOPERM)
    port = start_redis("--user", "default", "off", "--user", ACL_USER, "on", f">{PASSWORD}",
                       "~sec-*", "~zs:*", "&*", "+@all")  # fmt: skip
    url = f"redis://{ACL_USER}:{PASSWORD}@127.0.0.1:{port}"
    xs = np.random.default_rng(9).normal(0, 50, (3, 3, 32, 32)).astype(np.float32)
    with InputQueue(url=url, name=stream) as queue:
        queue.enqueue_many((f"n{i}", {"t": x}) for i, x in enumerate(xs))
        queue.db.xadd(stream, {"uri": "seed", "image": base64.b64encode(jpeg(3))})
    config = _server_config(onnx_model_dir, tmp_path, stream=stream, src=url)
    config["params"].update(batch_size=8, max_wait_ms=500, claim_idle_ms=300, max_deliveries=3)
    admin = _admin(url)
    try:
        with _serving(config) as server:
            # the native records of the same batch are answered at once, not held up by it
            with OutputQueue(url=url, name=stream) as output:
                answers = output.query_many([f"n{i}" for i in range(3)], timeout=30)
            for i, scores in enumerate(onnx_direct(onnx_model_dir, xs)):
                assert_top_n(answers[f"n{i}"], scores, 3)
            # the seed record is retried (its write refused each time), dead-lettered, then
            # acknowledged without the result Redis refuses; the worker serves on
            deadline = time.monotonic() + 60
            while admin.xpending(stream, "serving")["pending"]:
                assert time.monotonic() < deadline, "the unwritable record was never settled"
                time.sleep(0.05)
            dead = admin.xrange(keys.dead_letter(stream))
            assert [f[b"uri"] for _, f in dead] == [b"seed"]
            assert server.running
            with InputQueue(url=url, name=stream) as queue:
                _assert_serves(queue, onnx_model_dir, seed=10)
        log_text = (tmp_path / "work" / "error.log").read_text()
        assert "no result could be written; it stays pending" in log_text
        assert "acknowledged without a result" in log_text
        assert "NoPermissionError" in log_text
    finally:
        admin.close()


# ------------------------------------------------------------------ what `zoo-serve start` says


@pytest.fixture(scope="module")
def bad_certs(certs: dict[str, str]) -> dict[str, str]:
    """TLS files that do not do: a client certificate and key from another CA (rogue_crt,
    rogue_key), that CA (other_ca), and a CA file with no certificate in it (garbage)."""
    d = Path(certs["ca"]).parent
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", d / "other.key", "-out", d / "other.crt",
             "-days", "2", "-subj", "/CN=another CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    _openssl("req", "-new", *ec, "-keyout", d / "rogue.key", "-out", d / "rogue.csr",
             "-subj", "/CN=rogue client")  # fmt: skip
    _openssl("x509", "-req", "-in", d / "rogue.csr", "-CA", d / "other.crt",
             "-CAkey", d / "other.key", "-CAcreateserial", "-days", "2",
             "-extfile", d / "client.ext", "-out", d / "rogue.crt")  # fmt: skip
    (d / "garbage.pem").write_text("not a certificate\n")
    return {
        "other_ca": str(d / "other.crt"),
        "rogue_crt": str(d / "rogue.crt"),
        "rogue_key": str(d / "rogue.key"),
        "garbage": str(d / "garbage.pem"),
    }


# problem -> (how the data section changes, what the error must say)
START_PROBLEMS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "wrong password": ({"password": WRONG}, ["refused the login", "data.password"]),
    "no password": ({}, ["refused the login", "Authentication required", "data.password"]),
    "CA file missing": (
        {"tls_ca": "/nonexistent/ca.crt"},
        ["data.tls_ca: cannot read the CA certificate '/nonexistent/ca.crt'", "No such file"],
    ),
    "server signed by another CA": (
        {"tls_ca": "other_ca"},
        ["TLS handshake failed", "CERTIFICATE_VERIFY_FAILED", "not signed by a CA in data.tls_ca"],
    ),
    "no client certificate": (
        {"tls_cert": None, "tls_key": None},
        ["TLS handshake failed", "set data.tls_cert and data.tls_key"],
    ),
}


@pytest.mark.parametrize("problem", list(START_PROBLEMS))
def test_start_in_the_background_names_the_auth_or_tls_problem(
    problem, start_redis, certs, bad_certs, onnx_model_dir, tmp_path, stream
) -> None:
    """`zoo-serve start` (the server a background child) prints its child's error: a wrong or
    missing password, the TLS file that cannot be read, the CA or client certificate the
    handshake failed on. Exit code 3 (the server failed), 2 for a config value."""
    change, says = START_PROBLEMS[problem]
    if problem.endswith("password"):
        port = start_redis("--requirepass", PASSWORD)
        data: dict[str, Any] = {"src": f"redis://127.0.0.1:{port}", "stream": stream}
    else:
        port = start_redis(*_tls_args(certs, auth_clients=True), tls=True)
        data = _tls_data(certs, port, stream)
    data.update({k: bad_certs.get(v, v) if isinstance(v, str) else v for k, v in change.items()})
    plain_config(
        tmp_path, {"path": str(onnx_model_dir)}, {k: v for k, v in data.items() if v is not None}
    )
    started = zoo_serve("start", "--timeout", "60", cwd=tmp_path)
    error = [line for line in started.stderr.splitlines() if line.startswith("zoo-serve: ")]
    assert started.returncode == (2 if "missing" in problem else 3), started.stderr
    assert error and all(text in error[-1] for text in says), started.stderr
    for secret in (PASSWORD, WRONG):
        assert secret not in started.stderr


def test_each_tls_file_problem_is_named(start_redis, certs, bad_certs, stream) -> None:
    """Clients and servers alike: the key that does not fit the certificate, a CA file without
    a certificate, a client certificate the server does not trust, a file that is not there."""
    port = start_redis(*_tls_args(certs, auth_clients=True), tls=True)
    data = _tls_data(certs, port, stream)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        (
            {"tls_key": certs["server_key"]},
            BrokerConnectionError,
            f"TLS could not be set up: .*KEY_VALUES_MISMATCH.*data.tls_key \\({certs['server_key']}"
            f"\\) is not the key of data.tls_cert",
        ),
        (
            {"tls_ca": bad_certs["garbage"]},
            BrokerConnectionError,
            f"data.tls_ca \\({bad_certs['garbage']}\\) holds no PEM certificate",
        ),
        (
            {"tls_cert": bad_certs["rogue_crt"], "tls_key": bad_certs["rogue_key"]},
            BrokerConnectionError,
            # the server's refusal comes as an alert, or (TLS 1.3) as a bare EOF
            "TLS handshake failed.*data.tls_cert .*rogue.crt.*must be signed by a CA the server "
            "trusts",
        ),
        (
            {"tls_key": "/nonexistent/k.pem"},
            ConfigError,
            "data.tls_key: cannot read the client key",
        ),
        ({"tls_cert": "/nonexistent/c.pem"}, ConfigError, "data.tls_cert: cannot read the client"),
    ]
    for change, error, says in cases:
        with pytest.raises(error, match=says):
            InputQueue(config={"data": {**data, **change}})
