"""Every Redis key name zoo_serving uses, in one place.

A stream name holds only ``[A-Za-z0-9_.-]`` (checked by the config), so ``{stream}`` is an
unambiguous Redis Cluster hash tag: a stream and all its keys live in one slot, and a result key
of one stream can never equal one of another.
"""

from __future__ import annotations

import zlib

PREFIX = "zs"  # namespace of every key zoo_serving owns
ZOO_RESULT_PREFIX = "cluster-serving_"  # result hashes of Analytics Zoo v0.9-v0.11 clients
SEED_RESULT_PREFIX = "result:"  # result hashes of seed-era clients
AS_LIST = "list"  # a result key holding a one-element list (native results)
AS_HASH = "hash"  # a result key holding a hash with the field ``value`` (zoo, seed era)
AS_PRIVATE = "private"  # a one-element list only its sender knows (native ``reply_to``)
AS_INBOX = "inbox"  # appended to a client's inbox list, after its token (native ``inbox``)


def partition_streams(stream: str, partitions: int) -> list[str]:
    """The streams of ``stream`` split in ``partitions`` (``data.partitions``): the first is
    ``stream`` itself (so its keys, and where Analytics Zoo and seed-era clients add records,
    are those of an unsplit stream), the others ``<stream>:p<i>``. ``:`` is not allowed in a
    stream name, so a partition is never another stream; each is its own hash tag, so its own
    Redis Cluster slot, and all its keys (group, results, claims, dead letters, bound) are in
    it."""
    return [stream] + [f"{stream}:p{i}" for i in range(1, partitions)]


def partition_of(stream: str, uri: str | bytes, partitions: int) -> str:
    """The partition stream a record with ``uri`` goes to: a stable hash of the uri (CRC-32,
    the same in every process and language), so any client finds its result."""
    if partitions <= 1:
        return stream
    uri_b = uri if isinstance(uri, bytes) else uri.encode("utf-8")
    index = zlib.crc32(uri_b) % partitions
    return stream if index == 0 else f"{stream}:p{index}"


def partitions(stream: str) -> str:
    """String: the partition count (``data.partitions``) the server of ``stream`` serves it
    with; clients read it, so they spread records as the workers read them."""
    return f"{PREFIX}:{{{stream}}}:partitions"


def result(stream: str, uri: str | bytes) -> bytes:
    """List holding the one result of ``uri`` (native protocol); expires after result_ttl_s."""
    uri_b = uri if isinstance(uri, bytes) else uri.encode("utf-8")
    return f"{PREFIX}:{{{stream}}}:result:".encode() + uri_b


def reply(stream: str, token: str | bytes) -> bytes:
    """List holding the one result of a record sent with ``reply_to`` (native protocol 2:
    ``predict()``, the HTTP door): only its sender knows the token, and it is not listed in
    :func:`finished`, so ``dequeue`` cannot take it; expires after result_ttl_s."""
    token_b = token if isinstance(token, bytes) else token.encode("utf-8")
    return f"{PREFIX}:{{{stream}}}:reply:".encode() + token_b


def inbox(stream: str, client: str | bytes) -> bytes:
    """List of a client's private results (native protocol 3: records with ``inbox``), each
    ``<reply_to token>\\n<result>``, in the order they were written; one blocking read takes
    every result waiting. Expires ``data.result_ttl_s`` after the last write."""
    client_b = client if isinstance(client, bytes) else client.encode("utf-8")
    return f"{PREFIX}:{{{stream}}}:inbox:".encode() + client_b


def shm_regions(stream: str) -> str:
    """Hash region name -> JSON lease (host, pid, uid, bytes, ts in Redis time) of the shared
    memory regions clients of the stream registered (native protocol 3, ``shm:<name>``
    inputs); a lease not renewed is swept by a worker of that host, which unlinks its file."""
    return f"{PREFIX}:{{{stream}}}:shm"


def uri_claim(stream: str, uri: str | bytes) -> bytes:
    """String: the id of the entry that claims ``uri`` while it is queued or in flight
    (``InputQueue.enqueue``), so a second record cannot take its result key; the complete step
    deletes it when it writes that result (the result key then holds the uri until fetched)."""
    uri_b = uri if isinstance(uri, bytes) else uri.encode("utf-8")
    return f"{PREFIX}:{{{stream}}}:claim:".encode() + uri_b


def zoo_result(stream: str, uri: str | bytes) -> bytes:
    """Hash ``cluster-serving_<stream>:<uri>``, field ``value``: the result of an Analytics Zoo
    v0.9-v0.11 record (base64 Arrow, or ``NaN``), where that release's client looks for it;
    expires after result_ttl_s. No hash tag: the original key format is fixed."""
    uri_b = uri if isinstance(uri, bytes) else uri.encode("utf-8")
    return f"{ZOO_RESULT_PREFIX}{stream}:".encode() + uri_b


def seed_result(uri: str | bytes) -> bytes:
    """Hash ``result:<uri>``, field ``value``: the top-N of a seed-era record (stream
    ``image_stream``, fields ``uri`` and ``image``); expires after result_ttl_s."""
    uri_b = uri if isinstance(uri, bytes) else uri.encode("utf-8")
    return SEED_RESULT_PREFIX.encode() + uri_b


def model(stream: str) -> str:
    """String: JSON of the served model (backend, inputs, outputs), written by each worker when
    its model is loaded; the HTTP front door reads it for /v2/models/<name>."""
    return f"{PREFIX}:{{{stream}}}:model"


def finished(stream: str) -> str:
    """List of uris whose results were written to :func:`result` keys, in order: what
    ``OutputQueue.dequeue`` drains (results sent to :func:`reply` keys are not in it)."""
    return f"{PREFIX}:{{{stream}}}:finished"


def workers(stream: str) -> str:
    """Hash consumer name -> JSON heartbeat (host, pid, served, ready, ts) of each live worker."""
    return f"{PREFIX}:{{{stream}}}:workers"


def ready(stream: str) -> str:
    """String set while at least one worker has its model loaded and warmed up."""
    return f"{PREFIX}:{{{stream}}}:ready"


def servers(stream: str) -> str:
    """Hash server id -> JSON claim (model fingerprint, host, pid, work dir, ts in Redis time)
    of each server serving the stream, renewed every second; a server with another model is
    refused while a live claim stands."""
    return f"{PREFIX}:{{{stream}}}:servers"


def control(stream: str) -> str:
    """String a stop request writes (``stop``); every worker of the stream watches it."""
    return f"{PREFIX}:{{{stream}}}:control"


def dead_letter(stream: str) -> str:
    """Stream of records given up on after too many deliveries."""
    return f"{PREFIX}:{{{stream}}}:dead"


def max_len(stream: str) -> str:
    """String: the bound on unprocessed records the server set (data.max_queue_len); clients
    check it atomically when they add records."""
    return f"{PREFIX}:{{{stream}}}:max_len"


def producer(stream: str, producer_id: str) -> str:
    """String: the last record number a producer (one InputQueue in one thread) added to the
    stream, so a resent add cannot add a record twice; expires 10 minutes after its last add."""
    return f"{PREFIX}:{{{stream}}}:producer:{producer_id}"


def model_stream(base: str, name: str) -> str:
    """The input stream of model ``name`` of a server whose ``data.stream`` is ``base`` (the
    default model's stream is ``base`` itself)."""
    return f"{base}.{name}"


def models(base: str) -> str:
    """Hash model name -> JSON of the model as the server's repository has it (its stream,
    versions, policy, whether it is the default): the model index clients and tools read."""
    return f"{PREFIX}:{{{base}}}:models"


def wanted(base: str) -> str:
    """Hash model name -> JSON of what should be loaded (``load``, ``versions``): the wanted
    state every worker of the server follows."""
    return f"{PREFIX}:{{{base}}}:wanted"


def wanted_gen(base: str) -> str:
    """Integer bumped at every change of :func:`wanted` (or the index): workers re-read the
    wanted state when it moves."""
    return f"{PREFIX}:{{{base}}}:wanted_gen"


def model_states(base: str) -> str:
    """Hash worker name -> JSON of the models that worker holds (state, versions, memory, load
    seconds, evictions, last error): what ``zoo-serve models list`` and /metrics show."""
    return f"{PREFIX}:{{{base}}}:model_states"


def hash_tag(key: bytes) -> bytes:
    """The ``{...}`` part of a key: keys with the same one share a Redis Cluster slot."""
    start = key.find(b"{")
    end = key.find(b"}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start + 1 else key
