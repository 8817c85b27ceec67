"""A small asyncio HTTP/1.1 client for the HTTP benchmarks: one keep-alive connection per
caller, requests written whole, answers read by Content-Length. It spends far less CPU per
request than a general client, so on two cores the figures measure the front door, not the
load generator. Correctness against a real client is ``tests/integration/
test_http_triton.py``'s job (tritonclient)."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import numpy as np


def v2_request(batch: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 infer body for one FP32 input ``input``, and its extra headers: Triton's
    binary extension both ways, or JSON both ways."""
    spec: dict[str, Any] = {"name": "input", "shape": list(batch.shape), "datatype": "FP32"}
    if not binary:
        spec["data"] = batch.ravel().tolist()
        return json.dumps({"inputs": [spec]}).encode(), {"Content-Type": "application/json"}
    spec["parameters"] = {"binary_data_size": batch.nbytes}
    head = json.dumps({"inputs": [spec], "parameters": {"binary_data_output": True}}).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
    return head + batch.astype("<f4").tobytes(), headers


def v2_answer(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """The outputs of a v2 infer answer, JSON or binary, by name."""
    size = int(header_length) if header_length is not None else len(body)
    meta = json.loads(body[:size])
    out, offset = {}, size
    for spec in meta["outputs"]:
        nbytes = (spec.get("parameters") or {}).get("binary_data_size")
        if nbytes is None:
            arr = np.asarray(spec["data"], np.float32)
        else:
            arr = np.frombuffer(body[offset : offset + nbytes], "<f4")
            offset += nbytes
        out[spec["name"]] = arr.reshape(spec["shape"])
    return out


class HttpConnection:
    """One keep-alive connection."""

    def __init__(self, reader: Any, writer: Any, host: str) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host

    @classmethod
    async def open(cls, url: str) -> HttpConnection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer, f"{parts.hostname}:{parts.port}")

    async def post(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict, bytes]:
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status_line = await self.reader.readuntil(b"\r\n")
        raw = await self.reader.readuntil(b"\r\n\r\n")
        got = {}
        for line in raw.decode("latin-1").split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                got[k.strip().lower()] = v.strip()
        if got.get("transfer-encoding", "").lower() == "chunked":  # Ray Serve's proxy
            answer = await self._chunks()
        else:
            answer = await self.reader.readexactly(int(got.get("content-length", "0")))
        return int(status_line.split()[1]), got, answer

    async def _chunks(self) -> bytes:
        """A chunked body: ``<hex size>\r\n<bytes>\r\n`` until a size of 0."""
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # no trailers: the blank line
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    async def post_v2(self, path: str, body: bytes, headers: dict[str, str]) -> dict:
        status, got, answer = await self.post(path, body, headers)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {answer[:200]!r}")
        return v2_answer(answer, got.get("inference-header-content-length"))

    def close(self) -> None:
        self.writer.close()
