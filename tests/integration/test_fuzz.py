"""Property-based fuzz of the native wire format through one live server.

Hypothesis draws batches of raw stream records, most of them malformed (truncated or corrupt
images, wrong dtype or shape, absurd dims, NaN/inf, missing and extra fields, oversized payloads,
bad deadlines, non-UTF-8 uris) and the rest good, interleaved. They go onto the stream with a bare
``XADD`` (no client-side checks), and every record must come back as its own result: an error
with the expected code and a message naming the problem, or the model's own answer for the same
input. The server must survive all of it and leave nothing pending.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bombs import (
    bmp_claiming,
    gif_claiming,
    jpeg_with_fill_claiming,
    png_claiming,
    pnm_claiming,
    tiff_claiming,
    webp_lossless_claiming,
)
from conftest import jpeg
from helpers import assert_top_n, decoded_image, onnx_direct
from zoo_serving import keys
from zoo_serving.errors import ZooServingError
from zoo_serving.wire.native import decode_result

LIMIT = 65536  # data.max_payload_bytes of the server under test
SHAPE = (3, 32, 32)  # the model's per-record input
SHAPE_TEXT = "(3, 32, 32)"
WAIT_S = 30.0  # longest wait for the results of one batch
EXAMPLES = 50
BAD_PER_EXAMPLE = (42, 50)  # EXAMPLES * 42 = 2,100 malformed records at least
GOOD_PER_EXAMPLE = (5, 14)
MIN_MALFORMED = 2000

seeds = st.integers(0, 2**32 - 1)
names = st.sampled_from([b"t", b"input", b"img", b"", b"\xff\xfe"])
# uris: plain, non-UTF-8, or any bytes; a unique counter is appended when sending
uri_prefixes = st.one_of(
    st.sampled_from([b"r", b"\xff\xfe", b"\xc3(", b"\x80"]), st.binary(max_size=6)
)
# fields that are neither payloads nor metadata of one: ignored by design
extras = st.sampled_from(
    [
        {},
        {b"foo": b"bar"},
        {b"dtype:orphan": b"<f8", b"shape:orphan": b"1"},
        {b"tensor": b"no colon, not a payload", b"image": b"\x00"},
        {b"\xff": b"\xfe"},
    ]
)


@dataclass(repr=False)
class Record:
    """One drawn record and what its result must be."""

    kind: str
    fields: dict[bytes, bytes]
    code: str | None = None  # the expected error code; None for a good record
    says: tuple[str, ...] = ()  # phrases the error message must contain
    x: np.ndarray | None = None  # good: the model input the server should build
    uri_prefix: bytes | None = b"r"  # None: the record goes out without a uri
    uri: bytes = b""
    result_key: bytes = b""

    @property
    def good(self) -> bool:
        return self.code is None

    def __repr__(self) -> str:  # a falsifying batch is printed: keep it short
        sizes = {k: len(v) for k, v in self.fields.items()}
        want = "good" if self.good else self.code
        return f"Record({self.kind}, {want}, uri={self.uri!r}, sizes={sizes})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # what Hypothesis prints
        printer.text(repr(self))


def name_text(name: bytes) -> str:
    return name.decode("utf-8", "replace")


def tensor_fields(name: bytes, data: bytes, dtype: bytes, shape: bytes) -> dict[bytes, bytes]:
    return {b"tensor:" + name: data, b"dtype:" + name: dtype, b"shape:" + name: shape}


def dims(shape: tuple[int, ...]) -> bytes:
    return ",".join(str(d) for d in shape).encode()


def shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def float_tensor(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 50, shape).astype(np.float32)


def random_image(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encode(ext: str, img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


@st.composite
def images(draw: st.DrawFn) -> bytes:
    """A valid encoded image of random size and format."""
    seed = draw(seeds)
    h, w = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    fmt = draw(st.sampled_from(["jpeg", "png", "png16", "png_gray", "png_bgra", "bmp"]))
    if fmt == "jpeg":
        return jpeg(seed, h, w)
    img = random_image(seed, h, w)
    if fmt == "png16":
        return encode(".png", img.astype(np.uint16) * 257)
    if fmt == "png_gray":
        return encode(".png", img[:, :, 0])
    if fmt == "png_bgra":
        return encode(".png", np.dstack([img, img[:, :, :1]]))
    return encode("." + fmt, img)


# ------------------------------------------------------------------ good records


GOOD_DTYPES = ["<f4", ">f4", "=f4", "<f2", "|u1", "|i1", "<i2", "<u2", "|b1"]


@st.composite
def good_tensor(draw: st.DrawFn) -> Record:
    dtype = np.dtype(draw(st.sampled_from(GOOD_DTYPES)))
    rng = np.random.default_rng(draw(seeds))
    if dtype.kind == "f":
        arr = rng.normal(0, 50, SHAPE).astype(dtype)
    elif dtype.kind == "b":
        arr = rng.integers(0, 2, SHAPE).astype(dtype)
    else:
        info = np.iinfo(dtype)
        arr = rng.integers(max(info.min, -300), min(info.max, 300), SHAPE, endpoint=True)
        arr = arr.astype(dtype)
    shape = draw(st.sampled_from([SHAPE, (1, *SHAPE)]))  # a batch of one is accepted
    name = draw(names)
    fields = tensor_fields(name, arr.tobytes(), dtype.str.encode(), dims(shape))
    fields.update(draw(extras))
    if draw(st.booleans()):
        fields[b"deadline_ms"] = str(int(time.time() * 1000) + 3_600_000).encode()
    return Record(f"good_tensor:{dtype.str}", fields, x=arr.astype(np.float32))


@st.composite
def good_image(draw: st.DrawFn) -> Record:
    data = draw(images())
    kind = "good_image:plain"
    if draw(st.integers(0, 3)) == 0 and data[:2] == b"\xff\xd8":
        # flip one byte of the entropy-coded data: a garbled picture, still a JPEG
        buf = bytearray(data)
        start = buf.find(b"\xff\xda") + 14
        spots = [i for i in range(start, len(buf) - 2) if buf[i] != 0xFF and buf[i - 1] != 0xFF]
        if spots:
            pos = draw(st.sampled_from(spots))
            buf[pos] = draw(st.sampled_from([v for v in range(255) if v != buf[pos]]))
            data, kind = bytes(buf), "good_image:garbled"
    elif draw(st.integers(0, 3)) == 0:
        data += b"\x00" * draw(st.integers(1, 2000))  # trailing bytes after the image
        kind = "good_image:trailing"
    fields = {b"image:" + draw(names): data}
    fields.update(draw(extras))
    return Record(kind, fields, x=decoded_image(data))


good_records = st.one_of(good_tensor(), good_image())


# ------------------------------------------------------------------ malformed records


def bad(kind: str, fields: dict[bytes, bytes], code: str, *says: str) -> Record:
    return Record(kind, fields, code=code, says=says)


def f4_fields(draw: st.DrawFn, name: bytes = b"t") -> dict[bytes, bytes]:
    return tensor_fields(name, float_tensor(draw(seeds)).tobytes(), b"<f4", b"3,32,32")


@st.composite
def truncated_image(draw: st.DrawFn) -> Record:
    data = draw(images())
    # cut at least 3 bytes: a JPEG missing only its end marker may still decode
    cut = draw(st.integers(1, len(data) - 3)) if len(data) > 4 else 1
    return bad(
        "truncated_image",
        {b"image:t": data[:cut]},
        "decode",
        f"{cut} bytes starting",
        "do not decode as an image",
    )


@st.composite
def corrupt_jpeg_header(draw: st.DrawFn) -> Record:
    data = bytearray(jpeg(draw(seeds), draw(st.integers(1, 64)), draw(st.integers(1, 64))))
    where = draw(st.sampled_from(["app0", "sof"]))
    if where == "app0":
        data[2:4] = b"\x00\x00"  # no marker after SOI
    else:
        data[data.find(b"\xff\xc0") + 1] = 0x00  # no frame header
    return bad(
        f"corrupt_jpeg_header:{where}",
        {b"image:t": bytes(data)},
        "decode",
        "do not decode as an image",
    )


@st.composite
def random_bytes_image(draw: st.DrawFn) -> Record:
    # a leading 0x00 is no image signature; a PNG signature is followed by a bad IHDR CRC
    head = draw(st.sampled_from([b"\x00", b"\x89PNG\r\n\x1a\n"]))
    n = draw(st.integers(0, 4000))
    data = head + np.random.default_rng(draw(seeds)).bytes(n)
    return bad(
        "random_bytes_image",
        {b"image:" + draw(names): data},
        "decode",
        f"{len(data)} bytes starting {data[:8]!r}",
        "do not decode as an image",
    )


@st.composite
def empty_image(draw: st.DrawFn) -> Record:
    return bad("empty_image", {b"image:" + draw(names): b""}, "decode", "0 bytes")


@st.composite
def oversized(draw: st.DrawFn) -> Record:
    name = draw(names)
    if draw(st.booleans()):
        # a valid JPEG padded past the limit: refused before it is decoded
        data = jpeg(draw(seeds))
        data += b"\x00" * (draw(st.integers(LIMIT + 1, 4 * LIMIT)) - len(data))
        fields = {b"image:" + name: data}
    else:
        n = draw(st.integers(LIMIT // 4 + 1, LIMIT))  # float32 elements
        shape = draw(st.sampled_from([(n,), (1, n), (n, 1, 1)]))
        data = np.random.default_rng(draw(seeds)).normal(0, 1, n).astype(np.float32).tobytes()
        fields = tensor_fields(name, data, b"<f4", dims(shape))
    return bad(
        "oversized",
        fields,
        "too_large",
        f"{len(data)} bytes is over the limit of {LIMIT}",
        "max_payload_bytes",
    )


@st.composite
def wrong_dtype(draw: st.DrawFn) -> Record:
    dtype = np.dtype(draw(st.sampled_from(["<f8", ">f8", "<i8", "<i4", "<u4", "<c8", "<c16"])))
    arr = np.random.default_rng(draw(seeds)).normal(0, 50, SHAPE).astype(dtype)
    fields = tensor_fields(draw(names), arr.tobytes(), dtype.str.encode(), b"3,32,32")
    return bad(
        "wrong_dtype",
        fields,
        "bad_dtype",
        f"dtype {dtype} cannot be cast safely",
        "float32",
    )


@st.composite
def unknown_dtype(draw: st.DrawFn) -> Record:
    text = draw(
        st.sampled_from(
            [b"zz", b"", b"\xff\xfe", b"float33", b"M8[xx]", b"<U4", b"|O", b"O8", b"V8"]
            + [b"S4", b"<M8[s]", b"<m8", b"f4,f4", b"(2,)f4", b"<U99999999999999"]
        )
    )
    data = float_tensor(draw(seeds)).tobytes()
    fields = tensor_fields(b"t", data, text, b"3,32,32")
    try:
        dtype = np.dtype(text.decode("ascii"))
    except (TypeError, ValueError):
        shown = text.decode("ascii", "replace")
        return bad(
            "unknown_dtype:parse", fields, "bad_dtype", f"dtype {shown!r} is not a numpy dtype"
        )
    return bad("unknown_dtype:kind", fields, "bad_dtype", f"dtype {dtype} is not numeric")


WRONG_SHAPES = [
    (3, 16, 16),
    (32, 32, 3),
    (3, 32),
    (3072,),
    (),
    (1, 1, 3, 32, 32),
    (2, 3, 32, 32),
    (3, 32, 33),
    (1, 32, 32),
    (0, 32, 32),
]


@st.composite
def wrong_shape(draw: st.DrawFn) -> Record:
    shape = draw(st.sampled_from(WRONG_SHAPES))
    arr = float_tensor(draw(seeds), shape)
    seen = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape  # a batch of one is unwrapped
    return bad(
        "wrong_shape",
        tensor_fields(draw(names), arr.tobytes(), b"<f4", dims(shape)),
        "bad_shape",
        f"shape {shape_text(seen)} does not fit",
        SHAPE_TEXT,
    )


@st.composite
def absurd_dims(draw: st.DrawFn) -> Record:
    big = st.integers(10**6, 10**30)
    shape = draw(
        st.one_of(
            st.just((99999999, 99999999, 99999999)),
            st.tuples(big, big, big),
            st.tuples(st.just(3), big, st.integers(1, 10**30)),
        )
    )
    return bad(
        "absurd_dims",
        tensor_fields(b"t", float_tensor(draw(seeds)).tobytes(), b"<f4", dims(shape)),
        "decode",
        f"12288 bytes do not hold a float32 tensor of shape {shape_text(shape)}",
    )


@st.composite
def too_many_dims(draw: st.DrawFn) -> Record:
    n = draw(st.integers(33, 64))
    return bad(
        "too_many_dims",
        tensor_fields(b"t", b"\x00\x00\x80\x3f", b"<f4", dims((1,) * n)),
        "bad_shape",
        f"{n} dims is over the limit of 32",
    )


@st.composite
def negative_shape(draw: st.DrawFn) -> Record:
    shape = list(SHAPE)
    i = draw(st.integers(0, 2))
    shape[i] = -draw(st.integers(1, 10**12))
    fields = tensor_fields(b"t", float_tensor(draw(seeds)).tobytes(), b"<f4", dims(tuple(shape)))
    return bad("negative_shape", fields, "decode", "negative dimension", str(shape[i]))


@st.composite
def non_numeric_shape(draw: st.DrawFn) -> Record:
    text = draw(
        st.sampled_from(
            [b"a,b,c", b"3x32x32", b"3;32;32", b"3,,32", b"3.0,32,32", b"\xff", b"three", b","]
            + [b"3,32,32,", b"0x3,32,32", b"9" * 5000]
        )
    )
    fields = tensor_fields(b"t", float_tensor(draw(seeds)).tobytes(), b"<f4", text)
    return bad("non_numeric_shape", fields, "decode", "comma-separated integers", repr(text[:64]))


@st.composite
def byte_count_mismatch(draw: st.DrawFn) -> Record:
    data = float_tensor(draw(seeds)).tobytes()
    delta = draw(st.integers(-len(data), 4000).filter(lambda d: d != 0))
    data = data[:delta] if delta < 0 else data + b"\x01" * delta
    return bad(
        "byte_count_mismatch",
        tensor_fields(draw(names), data, b"<f4", b"3,32,32"),
        "decode",
        f"{len(data)} bytes do not hold a float32 tensor of shape {SHAPE_TEXT}",
        "takes 12288 bytes",
    )


@st.composite
def nan_inf(draw: st.DrawFn) -> Record:
    dtype = np.dtype(draw(st.sampled_from(["<f4", ">f4", "<f2"])))
    arr = np.random.default_rng(draw(seeds)).normal(0, 50, SHAPE).astype(dtype)
    spots = draw(st.sets(st.integers(0, arr.size - 1), min_size=1, max_size=20))
    for i in spots:
        arr.flat[i] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    shape = draw(st.sampled_from([SHAPE, (1, *SHAPE)]))
    return bad(
        "nan_inf",
        tensor_fields(draw(names), arr.tobytes(), dtype.str.encode(), dims(shape)),
        "decode",
        f"holds {len(spots)} NaN or infinite value(s)",
    )


@st.composite
def tensor_without_meta(draw: st.DrawFn) -> Record:
    name = draw(names)
    fields = f4_fields(draw, name)
    drop = draw(st.sampled_from([[b"dtype:"], [b"shape:"], [b"dtype:", b"shape:"]]))
    for prefix in drop:
        del fields[prefix + name]
    shown = name_text(name)
    return bad(
        "tensor_without_meta",
        fields,
        "missing_input",
        f"input {shown!r}: a tensor needs 'dtype:{shown}' and 'shape:{shown}'",
    )


@st.composite
def no_payload(draw: st.DrawFn) -> Record:
    return bad("no_payload", dict(draw(extras)), "missing_input", "record has no payload")


@st.composite
def extra_input(draw: st.DrawFn) -> Record:
    first, second = draw(st.lists(names, min_size=2, max_size=2, unique=True))
    fields = {}
    for name in (first, second):
        if draw(st.booleans()):
            fields.update(f4_fields(draw, name))
        else:
            fields[b"image:" + name] = jpeg(draw(seeds))
    return bad(
        "extra_input", fields, "missing_input", "model takes 1 input(s) ('input')", "record has 2"
    )


@st.composite
def bad_deadline(draw: st.DrawFn) -> Record:
    text = draw(
        st.sampled_from([b"soon", b"1e12", b"", b"12.5", b"\xff", b"0x10", b"1 2", b"9" * 5000])
    )
    fields = f4_fields(draw) | {b"deadline_ms": text}
    return bad("bad_deadline", fields, "decode", "deadline_ms must be an integer", repr(text[:32]))


@st.composite
def past_deadline(draw: st.DrawFn) -> Record:
    ago = draw(st.integers(1000, 10**12))
    payload = f4_fields(draw) if draw(st.booleans()) else {b"image:t": jpeg(draw(seeds))}
    fields = payload | {b"deadline_ms": str(int(time.time() * 1000) - ago).encode()}
    return bad("past_deadline", fields, "deadline_exceeded", "deadline exceeded by")


@st.composite
def no_uri(draw: st.DrawFn) -> Record:
    record = bad("no_uri", f4_fields(draw), "missing_input", "record has no 'uri' field")
    record.uri_prefix = None  # its result is keyed by the stream entry id
    return record


# Malformed records answered today with code "server" (an unexpected exception) instead of an
# input error: see test_malformed_records_fuzzing_found_answered_as_server_errors below. Move
# them into BAD_KINDS once src is fixed.


# format, a file claiming width x height, the smallest and largest dims drawn: every size is
# over data.max_image_pixels (2**26) and must be refused by its header, before any decode
ABSURD = [
    ("png", png_claiming, 40_000, 10**6),
    ("gif", gif_claiming, 40_000, 65535),
    ("bmp", bmp_claiming, 40_000, 2**31 - 1),
    ("webp", webp_lossless_claiming, 9_000, 16384),
    ("tiff", tiff_claiming, 40_000, 2**32 - 1),
    ("jpeg_fill", jpeg_with_fill_claiming, 40_000, 65535),
    ("pnm", pnm_claiming, 40_000, 10**9),
]


@st.composite
def image_absurd_dims(draw: st.DrawFn) -> Record:
    fmt, claiming, low, top = draw(st.sampled_from(ABSURD))
    w, h = draw(st.integers(low, top)), draw(st.integers(low, top))
    return bad(
        f"image_absurd_dims:{fmt}",
        {b"image:" + draw(names): claiming(w, h)},
        "too_large",
        f"image of {w}x{h} pixels is over the limit",
    )


@st.composite
def zero_size_absurd_dims(draw: st.DrawFn) -> Record:
    big = st.integers(2**32, 10**30)
    shape = tuple(draw(st.permutations([0, draw(big), draw(big)])))
    return bad(
        "zero_size_absurd_dims",
        {b"tensor:t": b"", b"dtype:t": b"<f4", b"shape:t": dims(shape)},
        "bad_shape",
        shape_text(shape),
    )


@st.composite
def deadline_overflow(draw: st.DrawFn) -> Record:
    # parses as an int, too big for a float: time.time() * 1000 - deadline overflows
    text = b"-1" + b"0" * draw(st.integers(310, 4000))
    fields = f4_fields(draw) | {b"deadline_ms": text}
    return bad("deadline_overflow", fields, "decode", "deadline_ms must be an integer")


BAD_KINDS: list[Callable[[], st.SearchStrategy[Record]]] = [
    truncated_image,
    corrupt_jpeg_header,
    random_bytes_image,
    empty_image,
    oversized,
    wrong_dtype,
    unknown_dtype,
    wrong_shape,
    absurd_dims,
    too_many_dims,
    negative_shape,
    non_numeric_shape,
    byte_count_mismatch,
    nan_inf,
    tensor_without_meta,
    no_payload,
    extra_input,
    bad_deadline,
    past_deadline,
    no_uri,
    image_absurd_dims,
    zero_size_absurd_dims,
    deadline_overflow,
]
bad_records = st.one_of(*(kind() for kind in BAD_KINDS))


@st.composite
def batches(draw: st.DrawFn) -> list[Record]:
    """Malformed and good records, interleaved, each with its uri prefix."""
    records = draw(st.lists(bad_records, min_size=BAD_PER_EXAMPLE[0], max_size=BAD_PER_EXAMPLE[1]))
    records += draw(
        st.lists(good_records, min_size=GOOD_PER_EXAMPLE[0], max_size=GOOD_PER_EXAMPLE[1])
    )
    order = draw(st.permutations(range(len(records))))
    out = [records[i] for i in order]
    for record in out:
        if record.uri_prefix is not None:
            record.uri_prefix = draw(uri_prefixes)
    return out


# ------------------------------------------------------------------ sending and checking


def send(db: Any, stream: str, records: list[Record], counter: itertools.count) -> None:
    pipe = db.pipeline(transaction=False)
    for record in records:
        fields = dict(record.fields)
        if record.uri_prefix is not None:
            record.uri = record.uri_prefix + b"#%d" % next(counter)
            fields = {b"uri": record.uri, b"zs": b"1"} | fields
        else:
            fields = {b"zs": b"1"} | fields
        pipe.xadd(stream, fields)
    for record, entry_id in zip(records, pipe.execute()):
        record.result_key = keys.result(stream, record.uri or entry_id)


def collect(db: Any, records: list[Record], timeout_s: float = WAIT_S) -> dict[bytes, Any]:
    """Every record's decoded result, by result key; BLPOP on all keys until all came."""
    waiting = {r.result_key for r in records}
    results: dict[bytes, Any] = {}
    end = time.monotonic() + timeout_s
    while waiting and (remaining := end - time.monotonic()) > 0:
        reply = db.blpop(list(waiting), timeout=max(min(remaining, 5.0), 0.01))
        if reply is None:
            continue
        key, blob = reply
        waiting.discard(key)
        results[key] = decode_result(blob)
    missing = [r.kind for r in records if r.result_key in waiting]
    assert not missing, f"no result within {timeout_s:.0f} s for {len(missing)}: {missing[:10]}"
    return results


def check(records: list[Record], results: dict[bytes, Any], model_dir: Any) -> None:
    good = [r for r in records if r.good]
    scores = onnx_direct(model_dir, np.stack([r.x for r in good])) if good else []
    for record, expected in zip(good, scores):
        value = results[record.result_key]
        assert isinstance(value, list), f"{record.kind} {record.uri!r}: got {value!r}"
        assert_top_n(value, expected, 3)
    for record in records:
        if record.good:
            continue
        value = results[record.result_key]
        where = f"{record.kind} {record.uri!r}"
        assert isinstance(value, ZooServingError), f"{where}: expected an error, got {value!r}"
        assert value.code == record.code, f"{where}: expected {record.code}, got {value!r}"
        for phrase in record.says:
            assert phrase in value.message, f"{where}: {phrase!r} not in {value.message!r}"


# ------------------------------------------------------------------ the test


@pytest.mark.timeout(600)
def test_malformed_records_get_errors_and_good_ones_answers(
    onnx_model_dir, serve, client, stream
) -> None:
    server = serve(onnx_model_dir, **{"params.batch_size": 8, "data.max_payload_bytes": LIMIT})
    db = client.db
    counter = itertools.count()
    sent: Counter[str] = Counter()
    non_utf8: Counter[bool] = Counter()  # by "was the record good"

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        # no shrinking: every example is a round trip through the server, so shrinking takes
        # minutes, and a failure already names the record's kind, uri and result
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(batches())
    def serve_batch(records: list[Record]) -> None:
        send(db, stream, records, counter)
        results = collect(db, records)
        check(records, results, onnx_model_dir)
        assert server.running
        sent.update(r.kind for r in records)
        for r in records:
            try:
                r.uri.decode("utf-8")
            except UnicodeDecodeError:
                non_utf8[r.good] += 1

    serve_batch()

    malformed = sum(n for kind, n in sent.items() if not kind.startswith("good"))
    assert malformed >= MIN_MALFORMED, f"only {malformed} malformed records were sent: {sent}"
    families = {kind.partition(":")[0] for kind in sent}
    assert {k.__name__ for k in BAD_KINDS} <= families, f"kinds never drawn: {sent}"
    assert non_utf8[True] and non_utf8[False], f"non-UTF-8 uris by good/bad: {non_utf8}"
    assert server.running
    assert db.xlen(stream) == 0
    group = server.config.data.group
    assert db.xpending(stream, group)["pending"] == 0


# ------------------------------------------------------------------ regressions found by fuzzing

F4 = {b"tensor:t": bytes(12288), b"dtype:t": b"<f4", b"shape:t": b"3,32,32"}
GAPS = {  # one instance of each kind fuzzing once answered with code 'server': fields, code, phrase
    # OpenCV 5 raises cv2.error, not returns None, for a header over its pixel limit
    "png_absurd_dims": ({b"image:t": png_claiming(100_000, 100_000)}, "too_large", "pixels"),
    "gif_absurd_dims": ({b"image:t": gif_claiming(65535, 65535)}, "too_large", "pixels"),
    "bmp_absurd_dims": ({b"image:t": bmp_claiming(100_000, 100_000)}, "too_large", "pixels"),
    # numpy's reshape raises ValueError for a zero-size shape whose dims it cannot index
    "zero_size_absurd_dims": (
        {b"tensor:t": b"", b"dtype:t": b"<f4", b"shape:t": b"0,99999999999,99999999999"},
        "bad_shape",
        "(0, 99999999999, 99999999999)",
    ),
    # int() parses it; time.time() * 1000 - deadline_ms then raises OverflowError
    "deadline_overflow": (F4 | {b"deadline_ms": b"-1" + b"0" * 400}, "decode", "deadline_ms"),
}


@pytest.mark.parametrize("gap", sorted(GAPS))
def test_records_fuzzing_once_broke_get_the_right_error(
    gap, onnx_model_dir, serve, client, stream
) -> None:
    fields, code, phrase = GAPS[gap]
    serve(onnx_model_dir, **{"data.max_payload_bytes": LIMIT})
    client.db.xadd(stream, {b"uri": gap.encode(), b"zs": b"1"} | fields)
    reply = client.db.blpop([keys.result(stream, gap)], timeout=WAIT_S)
    assert reply is not None, f"no result for {gap} within {WAIT_S:.0f} s"
    value = decode_result(reply[1])
    assert isinstance(value, ZooServingError)
    assert (value.code, phrase in value.message) == (code, True), repr(value)
