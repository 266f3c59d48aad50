"""The proxy's registry API driven by raw HTTP, the way docker, skopeo/podman, containerd and
oras push (their own end-to-end tests are under tests/realclients/)."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp

from kraken.core.digest import Digest
from kraken.registry.manifest import DOCKER_MANIFEST
from tests.support.cluster import Herd


class Proxy:
    def __init__(self, herd: Herd, http: aiohttp.ClientSession) -> None:
        self.herd = herd
        self.http = http
        self.url = herd.proxy.url

    def request(self, method: str, path: str, **kwargs) -> aiohttp.client._RequestContextManager:
        url = path if path.startswith("http") else self.url + path
        return self.http.request(method, url, **kwargs)

    async def start_upload(self, repo: str) -> str:
        async with self.request("POST", f"/v2/{repo}/blobs/uploads/", data=b"") as r:
            assert r.status == 202, await r.text()
            assert r.headers["Location"].startswith(self.url)
            return r.headers["Location"]

    async def push_monolithic(self, repo: str, data: bytes) -> Digest:
        """oras-py style: POST, then PUT with the whole body."""
        digest = Digest.of_bytes(data)
        location = await self.start_upload(repo)
        async with self.request("PUT", location, params={"digest": str(digest)}, data=data) as r:
            assert r.status == 201, await r.text()
        return digest

    async def push_chunked(self, repo: str, data: bytes, chunk: int) -> Digest:
        """Chunks with an inclusive Content-Range each, then an empty PUT."""
        digest = Digest.of_bytes(data)
        location = await self.start_upload(repo)
        for start in range(0, len(data), chunk):
            part = data[start:start + chunk]
            headers = {"Content-Range": f"{start}-{start + len(part) - 1}", "Content-Type": "application/octet-stream"}
            async with self.request("PATCH", location, data=part, headers=headers) as r:
                assert r.status == 202, await r.text()
                assert r.headers["Range"] == f"0-{start + len(part) - 1}"
                location = r.headers["Location"]
        async with self.request("PUT", location, params={"digest": str(digest)}) as r:
            assert r.status == 201, await r.text()
        return digest

    async def push_streamed(self, repo: str, data: bytes) -> Digest:
        """docker style: one PATCH with Transfer-Encoding: chunked, PUT `<location>?digest=`."""
        digest = Digest.of_bytes(data)
        location = await self.start_upload(repo)

        async def body() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 64 << 10):
                yield data[start:start + (64 << 10)]

        async with self.request("PATCH", location, data=body()) as r:
            assert r.status == 202, await r.text()
            assert r.request_info.headers["Transfer-Encoding"] == "chunked"
            location = r.headers["Location"]
        async with self.request("PUT", f"{location}?digest={digest}") as r:
            assert r.status == 201, await r.text()
        return digest

    async def put_manifest(self, repo: str, ref: str, raw: bytes, media_type: str) -> aiohttp.ClientResponse:
        """PUT a manifest; the response's body is read (``await r.json()`` still works)."""
        async with self.request(
            "PUT", f"/v2/{repo}/manifests/{ref}", data=raw, headers={"Content-Type": media_type}
        ) as r:
            await r.read()
            return r

    def staged_blobs(self) -> list[Path]:
        """Verified blobs still in the proxy's staging cache (they must all have gone to origins)."""
        return [p for p in (self.herd.workdir / "proxy" / "cache").rglob("*") if p.is_file()]

    def upload_sessions(self) -> set[str]:
        """Ids of upload sessions with bytes on the proxy's disk (other tests may leave some open)."""
        return {p.name for p in (self.herd.workdir / "proxy" / "uploads").iterdir()}

    def origin_uploads(self) -> set[str]:
        """Ids of uploads in flight on the origin (the proxy streams session bytes ahead to it)."""
        return {p.name for p in (self.herd.workdir / "origin" / "uploads").iterdir()}

    async def origin_has(self, repo: str, digest: Digest) -> bool:
        """Asks the origin (which also looks in its storage backend, testfs)."""
        url = f"{self.herd.origin.url}/namespace/{quote(repo, safe='')}/blobs/{digest}"
        async with self.http.head(url) as r:
            assert r.status in (200, 404), r.status
            return r.status == 200

    async def build_index_tag(self, repo: str, tag: str) -> str | None:
        async with self.http.get(f"{self.herd.build_index.url}/tags/{quote(f'{repo}:{tag}', safe=':')}") as r:
            return (await r.text()).strip() if r.status == 200 else None


def manifest_for(config: tuple[Digest, int], layers: list[tuple[Digest, int]], media_type: str) -> bytes:
    layer_type = ("application/vnd.docker.image.rootfs.diff.tar.gzip" if media_type == DOCKER_MANIFEST
                  else "application/vnd.oci.image.layer.v1.tar+gzip")
    config_type = ("application/vnd.docker.container.image.v1+json" if media_type == DOCKER_MANIFEST
                   else "application/vnd.oci.image.config.v1+json")
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": str(config[0]), "size": config[1]},
        "layers": [{"mediaType": layer_type, "digest": str(d), "size": s} for d, s in layers],
    }, indent=3).encode()
