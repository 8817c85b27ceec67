"""The wire, pinned byte for byte: Redis key names, the Lua scripts (Redis runs them by
SHA1), the heartbeat's fields and the result encodings. A change here is a protocol change:
make it on purpose, bump the version in docs/protocol.md, and update these values."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from zoo_serving import keys, wire
from zoo_serving.broker import producer, streams
from zoo_serving.config import load_config
from zoo_serving.errors import ShapeError
from zoo_serving.observe.stats import WorkerStats
from zoo_serving.serving.heartbeat import Heartbeat
from zoo_serving.serving.postprocess import postprocess


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def test_lua_scripts_are_the_ones_redis_knows() -> None:
    assert sha1(streams._COMPLETE_LUA) == "ee8a430a5f7909933ba74c0571ed4d8d5d8cf399"
    assert sha1(producer._ENQUEUE_LUA) == "e283b501bd76f4ad1c10ef684aa4307303f85dbd"
    assert sha1(streams._REFRESH_LUA) == "2958b5deb8bd1f4e6bdb2bf97a52865a12f6a6b2"


def test_key_names() -> None:
    assert keys.result("s", "u") == b"zs:{s}:result:u"
    assert keys.zoo_result("s", "u") == b"cluster-serving_s:u"
    assert keys.seed_result("u") == b"result:u"
    assert keys.model("s") == "zs:{s}:model"
    assert keys.finished("s") == "zs:{s}:finished"
    assert keys.workers("s") == "zs:{s}:workers"
    assert keys.ready("s") == "zs:{s}:ready"
    assert keys.control("s") == "zs:{s}:control"
    assert keys.dead_letter("s") == "zs:{s}:dead"
    assert keys.max_len("s") == "zs:{s}:max_len"
    assert keys.producer("s", "p") == "zs:{s}:producer:p"
    assert keys.reply("s", "t") == b"zs:{s}:reply:t"
    assert keys.uri_claim("s", "u") == b"zs:{s}:claim:u"
    assert keys.inbox("s", "c") == b"zs:{s}:inbox:c"
    assert keys.shm_regions("s") == "zs:{s}:shm"


def test_result_places_per_protocol() -> None:
    assert wire.result_place(wire.NATIVE, "s", b"u") == wire.ResultPlace(
        b"zs:{s}:result:u", "list", b"zs:{s}:claim:u"
    )
    assert wire.result_place(wire.ZOO, "s", b"u") == wire.ResultPlace(
        b"cluster-serving_s:u", "hash"
    )
    assert wire.result_place(wire.SEED, "s", b"u") == wire.ResultPlace(b"result:u", "hash")
    v2 = {b"uri": b"u", b"zs": b"2", b"reply_to": b"t"}
    assert wire.result_place(wire.NATIVE, "s", b"u", v2) == wire.ResultPlace(
        b"zs:{s}:reply:t", "private"
    )
    v1 = {**v2, b"zs": b"1"}  # in version 1, reply_to is the client's own field: ignored
    assert wire.result_place(wire.NATIVE, "s", b"u", v1) == wire.ResultPlace(
        b"zs:{s}:result:u", "list", b"zs:{s}:claim:u"
    )


def test_result_place_of_version_3_inbox() -> None:
    v3 = {b"uri": b"u", b"zs": b"3", b"reply_to": b"t", b"inbox": b"c"}
    assert wire.result_place(wire.NATIVE, "s", b"u", v3) == wire.ResultPlace(
        b"zs:{s}:inbox:c", "inbox", prefix=b"t\n"
    )
    # an inbox in version 2 is the client's own field; a bad inbox id: the reply key
    assert wire.result_place(wire.NATIVE, "s", b"u", {**v3, b"zs": b"2"}).key == b"zs:{s}:reply:t"
    bad = {**v3, b"inbox": b"a/b"}
    assert wire.result_place(wire.NATIVE, "s", b"u", bad).key == b"zs:{s}:reply:t"


def test_request_fields_of_version_3() -> None:
    fields = wire.native.encode_request("u", {"t": b"img"}, reply_to=b"tok", inbox=b"c1")
    assert fields == {
        b"uri": b"u",
        b"zs": b"3",
        b"reply_to": b"tok",
        b"inbox": b"c1",
        b"image:t": b"img",
    }
    ref = wire.native.ShmRef("zs-r1", 4096, 4000, "<f4", (1000,))
    shm = wire.native.encode_request("u", {"x": ref})
    assert shm == {
        b"uri": b"u",
        b"zs": b"3",
        b"shm:x": b"zs-r1:4096:4000",
        b"dtype:x": b"<f4",
        b"shape:x": b"1000",
    }


def test_request_fields_of_version_2() -> None:
    fields = wire.native.encode_request("u", {"t": b"img"}, reply_to=b"tok")
    assert fields == {b"uri": b"u", b"zs": b"2", b"reply_to": b"tok", b"image:t": b"img"}
    assert wire.native.encode_request("u", {"t": b"img"})[b"zs"] == b"1"
    v2 = wire.native.encode_request("u", {"t": b"img"}, version=wire.native.VERSION_2)
    assert v2 == {b"uri": b"u", b"zs": b"2", b"image:t": b"img"}


def test_heartbeat_fields_in_order() -> None:
    config = load_config({"model": {"path": "m"}})
    beat = Heartbeat(None, config, "w", WorkerStats(), started=1.0).body(True)  # type: ignore[arg-type]
    assert list(beat) == [
        "host",
        "pid",
        "runner",
        "server",
        "ready",
        "stuck_s",
        "succeeded",
        "failed",
        "written",
        "served_1m",
        "failures",
        "batches",
        "stages",
        "hist",
        "started",
        "ts",
        "latency",
    ]
    assert list(beat["hist"]) == [
        "batch_size",
        "queue_wait",
        "decode",
        "inference",
        "postprocess",
        "write",
    ]
    assert list(beat["hist"]["batch_size"]) == ["counts", "sum"]
    from zoo_serving.observe.stats import LATENCY_BUCKETS_MS

    assert LATENCY_BUCKETS_MS[:4] == (0.25, 0.5, 1.0, 1.5) and len(LATENCY_BUCKETS_MS) == 24
    assert beat["latency"] == {"counts": [0] * 25, "sum_s": 0.0}
    assert list(beat["stages"]) == [
        "records",
        "queue_wait",
        "decode",
        "inference",
        "postprocess",
        "write",
    ]
    json.dumps(beat)  # it goes out as JSON


def test_result_encodings() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)
    topn = postprocess({"prob": scores}, 2, 2)
    assert topn == [
        b'{"v":1,"kind":"topn","value":[[1,0.699999988079071],[2,0.20000000298023224]]}',
        b'{"v":1,"kind":"topn","value":[[0,0.5],[1,0.25]]}',
    ]
    tensor = postprocess({"out": np.arange(4, dtype="<i2").reshape(2, 2)}, 0, 2)
    assert tensor[1] == (
        b'{"v":1,"kind":"tensor","outputs":[{"name":"out","dtype":"<i2","shape":[2]}]}\n'
        b"\x02\x00\x03\x00"
    )
    mixed = postprocess({"prob": scores}, 1, 2, [wire.SEED, wire.NATIVE])
    assert mixed == [b"[[1,0.699999988079071]]", b'{"v":1,"kind":"topn","value":[[0,0.5]]}']
    assert wire.encode_failure(wire.NATIVE, ShapeError("bad")) == (
        b'{"v":1,"kind":"error","code":"bad_shape","message":"bad"}'
    )
    assert wire.encode_failure(wire.ZOO, ShapeError("bad")) == b"NaN"
    assert wire.encode_failure(wire.SEED, ShapeError("bad")) == b"NaN"


def test_results_name_the_model_and_version_that_answered() -> None:
    """Native results of a repository server carry ``model`` and ``version`` after ``kind``,
    as docs/protocol.md shows them; readers that do not know the keys ignore them."""
    origin = ("resnet", 2)
    topn = wire.encode_results({}, 1, [[(3, 0.5)]], origin=origin)
    assert topn == [b'{"v":1,"kind":"topn","model":"resnet","version":2,"value":[[3,0.5]]}']
    out = {"y": np.array([[1.0]], "<f4")}
    (tensor,) = wire.encode_results(out, 1, None, origin=origin)
    assert tensor == (
        b'{"v":1,"kind":"tensor","model":"resnet","version":2,'
        b'"outputs":[{"name":"y","dtype":"<f4","shape":[1]}]}\n\x00\x00\x80?'
    )
    got = wire.native.decode_full(tensor)
    assert (got.model, got.version) == ("resnet", 2)
    assert wire.native.decode_result(topn[0]) == [[3, 0.5]]
