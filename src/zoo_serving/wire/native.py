"""The native wire format, versions 1, 2 and 3 (see ``docs/protocol.md``).

A request is one stream entry, every field raw bytes::

    uri            the client's id for the record (any bytes)
    zs             protocol version, b"1" or b"2"
    tensor:<name>  C-order tensor bytes, with
    dtype:<name>   its numpy dtype string (b"<f4")
    shape:<name>   its comma-separated dims (b"3,224,224")
    image:<name>   an encoded image (JPEG, PNG, BMP, ...)
    deadline_ms    optional: Unix time in ms after which the record is not worth serving
    reply_to       version 2, optional: a token; the result goes to the sender's private key
                   (``keys.reply``) instead of the uri's
    version        optional: the model version to run (a positive integer); without it, the
                   newest version the server serves
    inbox          version 3, optional, with ``reply_to``: the sender's inbox id; the result
                   is appended to ``keys.inbox`` as ``<reply_to>\\n<result>``
    shm:<name>     version 3: ``<region>:<offset>:<nbytes>``, a tensor in a shared memory
                   region on the server's host (with ``dtype:<name>`` and ``shape:<name>``)

Version 2 is version 1 plus ``reply_to``, and a server that drops a uri's claim
(``keys.uri_claim``) when it writes the uri's result. Version 3 is version 2 plus ``inbox``
and ``shm:<name>``.

A result is one bytes value: a JSON header, then (for tensors) ``\\n`` and the C-order bytes of
every output, one after the other::

    {"v":1,"kind":"topn","model":"resnet","version":2,"value":[[class_index, probability], ...]}
    {"v":1,"kind":"tensor","model":"resnet","version":2,"outputs":[...]}\\n<bytes>
    {"v":1,"kind":"error","code":"bad_shape","message":"..."}

``model`` and ``version`` name what produced an answer (servers before the model repository
wrote none; readers ignore keys they do not know).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from ..errors import DecodeError, MissingInputError
from .native_results import (  # noqa: F401 - the results half of the format, re-exported
    Result,
    ResultValue,
    decode_full,
    decode_result,
    encode_error,
    encode_exception,
    encode_tensors,
    encode_topn,
    origin_fields,
)

VERSION = b"1"
VERSION_2 = b"2"  # version 1 and the reply fields (``reply_to``); reads version 1 unchanged
VERSION_3 = b"3"  # version 2, inboxes (``inbox``) and shared memory inputs (``shm:<name>``)
VERSIONS = (VERSION, VERSION_2, VERSION_3)
F_URI = b"uri"
F_VERSION = b"zs"
F_DEADLINE = b"deadline_ms"
F_MODEL_VERSION = b"version"  # optional: which version of the model to run
F_REPLY_TO = b"reply_to"
F_INBOX = b"inbox"
P_TENSOR = b"tensor:"
P_DTYPE = b"dtype:"
P_SHAPE = b"shape:"
P_IMAGE = b"image:"
P_SHM = b"shm:"
NAME_RE = re.compile(rb"[A-Za-z0-9_.-]{1,200}")  # an inbox id, a shared memory region
VIEW_MIN_BYTES = 64 * 1024  # a tensor below this is copied: cheaper than a send of its own

InputValue = Union[np.ndarray, bytes, bytearray, memoryview]  # noqa: UP007 - runtime alias


@dataclass(frozen=True)
class ShmRef:
    """A tensor in a shared memory region: ``nbytes`` from ``offset`` of ``region`` (a file
    of ``/dev/shm``), C order, of ``dtype`` and ``shape``. As an input value of
    :func:`encode_request` it goes on the wire as ``shm:<name>`` (version 3)."""

    region: str
    offset: int
    nbytes: int
    dtype: str = "<f4"
    shape: tuple[int, ...] = ()

    def field(self) -> bytes:
        return f"{self.region}:{self.offset}:{self.nbytes}".encode()


@dataclass(frozen=True)
class RawInput:
    """One input of a request as it came off the wire, not yet decoded: a tensor's or an
    image's bytes, or (``kind`` "shm") a reference to a tensor in shared memory, which the
    worker maps before decoding it as a tensor."""

    name: str
    kind: str  # "tensor", "image" or "shm"
    data: bytes | memoryview
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    ref: ShmRef | None = None


@dataclass
class Request:
    """A decoded stream entry: its uri, its raw inputs in wire order, its deadline."""

    uri: bytes
    inputs: list[RawInput] = field(default_factory=list)
    deadline_ms: int | None = None
    version: int | None = None  # the model version asked for; None: the newest served


# ---------------------------------------------------------------- requests


def encode_request(
    uri: str | bytes,
    inputs: Mapping[str, Any],
    deadline_ms: int | None = None,
    *,
    views: bool = False,
    reply_to: bytes | None = None,
    version: bytes = VERSION,
    inbox: bytes | None = None,
    model_version: int | None = None,
) -> dict[bytes, Any]:
    """Stream fields for one record: an ndarray is a tensor, bytes are an encoded image, a
    :class:`ShmRef` a tensor in shared memory (version 3).

    With ``views``, a large C-contiguous tensor goes as a memoryview of the array's own
    buffer instead of a copy: for senders that write the fields out before the caller can
    change the array (see :func:`zoo_serving.broker.connection.connect`'s ``zero_copy``).
    With ``reply_to`` (a token, version 2), the result goes to ``keys.reply(stream, token)``.
    With ``inbox`` as well (version 3), it is appended to ``keys.inbox(stream, inbox)``.
    ``version``: the ``zs`` to send (at least :data:`VERSION_2` where ``reply_to`` is given,
    :data:`VERSION_3` where ``inbox`` or a :class:`ShmRef` is).
    ``model_version``: the version of the model to run (default: the newest served).
    """
    if not inputs:
        raise MissingInputError("a record needs at least one input, got none")
    fields: dict[bytes, Any] = {
        F_URI: uri if isinstance(uri, bytes) else str(uri).encode("utf-8"),
        F_VERSION: version,
    }
    if reply_to is not None:
        fields[F_VERSION] = max(version, VERSION_2)
        fields[F_REPLY_TO] = reply_to
        if inbox is not None:
            fields[F_VERSION] = VERSION_3
            fields[F_INBOX] = inbox
    if model_version is not None:
        fields[F_MODEL_VERSION] = str(int(model_version)).encode()
    for name, value in inputs.items():
        key = name.encode("utf-8")
        if isinstance(value, ShmRef):
            fields[F_VERSION] = VERSION_3
            fields[P_SHM + key] = value.field()
            fields[P_DTYPE + key] = np.dtype(value.dtype).str.encode()
            fields[P_SHAPE + key] = ",".join(str(d) for d in value.shape).encode()
        elif isinstance(value, np.ndarray):
            if value.dtype.kind in "OV":
                raise DecodeError(
                    f"input {name!r}: dtype {value.dtype} cannot go on the wire; "
                    "send a numeric or bool array"
                )
            arr = value  # tobytes() is C order whatever the layout; 0-d stays 0-d
            fields[P_TENSOR + key] = _tensor_bytes(arr, views)
            fields[P_DTYPE + key] = arr.dtype.str.encode()
            fields[P_SHAPE + key] = ",".join(str(d) for d in arr.shape).encode()
        elif isinstance(value, (bytes, bytearray, memoryview)):
            fields[P_IMAGE + key] = bytes(value)
        else:
            raise DecodeError(
                f"input {name!r}: expected a numpy array (tensor) or bytes (encoded image), "
                f"got {type(value).__name__}"
            )
    if deadline_ms is not None:
        fields[F_DEADLINE] = str(int(deadline_ms)).encode()
    return fields


def _tensor_bytes(arr: np.ndarray, view: bool) -> bytes | memoryview:
    """The array's bytes in C order: a view of its buffer where asked and worth it, else a
    copy."""
    if view and arr.nbytes >= VIEW_MIN_BYTES and arr.flags.c_contiguous:
        try:
            return memoryview(arr.reshape(-1)).cast("B")  # type: ignore[arg-type]
        except (TypeError, ValueError):  # a dtype without the buffer protocol (datetime64)
            pass
    return arr.tobytes()


def _parse_shape(name: str, text: bytes) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        dims = tuple(int(p) for p in text.split(b","))
    except ValueError:
        raise DecodeError(
            f"input {name!r}: shape must be comma-separated integers like 3,224,224, "
            f"got {text[:64]!r}"
        ) from None
    if any(d < 0 for d in dims):
        raise DecodeError(f"input {name!r}: shape has a negative dimension: {dims}")
    return dims


def decode_request(fields: Mapping[bytes, bytes]) -> Request:
    """Parse the fields of a native stream entry; raises an InputError naming what is wrong."""
    uri = fields.get(F_URI)
    if uri is None:
        raise MissingInputError("record has no 'uri' field; every record needs one")
    version = _version(fields)
    req = Request(uri=uri, deadline_ms=_deadline(fields.get(F_DEADLINE)))
    req.version = requested_version(fields)
    for key, value in fields.items():
        if key.startswith(P_TENSOR):
            name = _field_name(key, P_TENSOR)
            dtype = fields.get(P_DTYPE + key[len(P_TENSOR) :])
            shape = fields.get(P_SHAPE + key[len(P_TENSOR) :])
            if dtype is None or shape is None:
                raise MissingInputError(
                    f"input {name!r}: a tensor needs 'dtype:{name}' and 'shape:{name}' fields "
                    "beside its bytes"
                )
            req.inputs.append(
                RawInput(
                    name,
                    "tensor",
                    value,
                    dtype.decode("ascii", "replace"),
                    _parse_shape(name, shape),
                )
            )
        elif key.startswith(P_IMAGE):
            req.inputs.append(RawInput(_field_name(key, P_IMAGE), "image", value))
        elif key.startswith(P_SHM) and version == VERSION_3:
            req.inputs.append(_shm_input(_field_name(key, P_SHM), value, fields))
    if not req.inputs:
        raise MissingInputError(
            "record has no payload: expected an 'image:<name>', 'tensor:<name>' or (zs 3) "
            "'shm:<name>' field, "
            f"got fields {sorted(k.decode('utf-8', 'replace') for k in fields)}"
        )
    return req


def requested_version(fields: Mapping[bytes, bytes]) -> int | None:
    """The model version a record asks for, or None (the newest served).

    Raises:
        DecodeError: not a positive integer.
    """
    raw = fields.get(F_MODEL_VERSION)
    if raw is None:
        return None
    try:
        version = int(raw)
        if not 0 < version < 2**31:
            raise ValueError(raw)
    except ValueError:
        raise DecodeError(
            f"version must be a positive integer naming a model version, got {raw[:32]!r}"
        ) from None
    return version


def _version(fields: Mapping[bytes, bytes]) -> bytes:
    version = fields.get(F_VERSION, VERSION)
    if version not in VERSIONS:
        raise DecodeError(
            f"protocol version {version[:16]!r} is not supported; this server speaks "
            "zs=1, zs=2 and zs=3 (see docs/protocol.md)"
        )
    if version != VERSION and fields.get(F_REPLY_TO) == b"":
        raise DecodeError("reply_to is empty; send a token, or leave the field out")
    if version == VERSION_3 and F_INBOX in fields:
        _check_inbox(fields)
    return version


def _deadline(deadline: bytes | None) -> int | None:
    if deadline is None:
        return None
    try:
        deadline_ms = int(deadline)
        if not 0 <= deadline_ms < 2**63:
            raise ValueError(deadline)
    except ValueError:
        raise DecodeError(
            "deadline_ms must be an integer of Unix milliseconds (0 to 2**63-1), "
            f"got {deadline[:32]!r}"
        ) from None
    return deadline_ms


def _check_inbox(fields: Mapping[bytes, bytes]) -> None:
    if not NAME_RE.fullmatch(fields[F_INBOX]):
        raise DecodeError(
            f"inbox {fields[F_INBOX][:64]!r} is not 1 to 200 of [A-Za-z0-9_.-]; the result "
            "went to the reply_to key instead"
        )
    if F_REPLY_TO not in fields or b"\n" in fields[F_REPLY_TO]:
        raise DecodeError("a record with an inbox needs a reply_to token without a newline")


def _shm_input(name: str, value: bytes, fields: Mapping[bytes, bytes]) -> RawInput:
    """A ``shm:<name>`` field and its dtype and shape: the reference, not yet mapped."""
    parts = value.split(b":")
    dtype = fields.get(P_DTYPE + name.encode("utf-8"))
    shape = fields.get(P_SHAPE + name.encode("utf-8"))
    if dtype is None or shape is None:
        raise MissingInputError(
            f"input {name!r}: a shared memory tensor needs 'dtype:{name}' and 'shape:{name}' "
            "fields beside its reference"
        )
    try:
        if len(parts) != 3 or not NAME_RE.fullmatch(parts[0]):
            raise ValueError(value)
        offset, nbytes = int(parts[1]), int(parts[2])
        if offset < 0 or nbytes < 0:
            raise ValueError(value)
    except ValueError:
        raise DecodeError(
            f"input {name!r}: shm reference {value[:80]!r} is not <region>:<offset>:<nbytes> "
            "(region 1 to 200 of [A-Za-z0-9_.-], offset and nbytes non-negative integers)"
        ) from None
    dims = _parse_shape(name, shape)
    text = dtype.decode("ascii", "replace")
    ref = ShmRef(parts[0].decode(), offset, nbytes, text, dims)
    return RawInput(name, "shm", b"", text, dims, ref)


def reply_token(fields: Mapping[bytes, bytes]) -> bytes | None:
    """The ``reply_to`` token of a version-2 or 3 record; None for version 1 (where a field
    of that name is the client's own and ignored) or when there is none."""
    if fields.get(F_VERSION) not in (VERSION_2, VERSION_3):
        return None
    return fields.get(F_REPLY_TO) or None


def reply_inbox(fields: Mapping[bytes, bytes]) -> bytes | None:
    """The inbox of a version-3 record whose result goes there: a valid inbox id and a
    ``reply_to`` token without a newline; else None (the result goes to the reply key)."""
    inbox = fields.get(F_INBOX)
    if fields.get(F_VERSION) != VERSION_3 or inbox is None or not NAME_RE.fullmatch(inbox):
        return None
    token = fields.get(F_REPLY_TO)
    if not token or b"\n" in token:
        return None
    return inbox


def _field_name(key: bytes, prefix: bytes) -> str:
    return key[len(prefix) :].decode("utf-8", "replace")


# ---------------------------------------------------------------- results
