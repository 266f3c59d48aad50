"""Preloading: the agent asks this host's container runtime to pull an image through it.

``POST /preload/tags/<repo>:<tag>?runtime=docker|containerd`` on the agent server makes the
runtime pull ``<registry>/<repo>:<tag>``, where ``<registry>`` is how the runtime reaches this
agent's registry (``localhost:16000`` by default). So an operator, or a scheduler about to
place a container on this host, can warm the host's image store in one call, and the layers
come through the agent, over P2P, like any pull.

A preload starts work on the host (a Docker pull, a ``ctr`` process), so it is a ``POST`` (a
link or a crawler's ``GET`` starts nothing; ``GET`` answers 405) and bounded: at most
``max_concurrent`` pulls run at once, ``max_queued`` more wait their turn, and beyond that the
answer is 429 with ``Retry-After``, before anything starts.

Docker is driven through its Engine API on its unix socket (``POST /images/create``, whose
streamed answer carries any error as a JSON line); containerd through ``ctr`` (its API is
gRPC), with ``--plain-http`` since the agent's registry is plain HTTP on this host.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aiohttp

from kraken.config import Duration
from kraken.http.urls import docker_api_url
from kraken.log import get_logger

log = get_logger("agent")

RUNTIMES = ("docker", "containerd")
#: Seconds to connect to the Docker daemon's socket: a local socket answers at once or never.
DOCKER_CONNECT_TIMEOUT = 5.0


@dataclass
class PreloadConfig:
    # How the host's runtime names this agent's registry ("" = localhost:<listen.port>).
    registry: str = ""
    # The Docker daemon's API socket.
    docker_socket: str = "/var/run/docker.sock"
    # containerd's socket, the namespace images are pulled into (k8s.io: the kubelet's), and ctr.
    containerd_socket: str = "/run/containerd/containerd.sock"
    containerd_namespace: str = "k8s.io"
    ctr: str = "ctr"
    # A pull not done within this long fails (504).
    timeout: Duration = 600.0
    # Pulls running at once; `max_queued` more wait for a turn, beyond that 429.
    max_concurrent: int = 2
    max_queued: int = 8

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("preload.timeout must be positive")
        if self.max_concurrent < 1 or self.max_queued < 0:
            raise ValueError("preload.max_concurrent must be >= 1 and preload.max_queued >= 0")


class PreloadError(Exception):
    """The runtime could not pull the image; ``status`` is the HTTP answer to give."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


#: Seconds a client refused for a full queue is told to wait (``Retry-After``).
RETRY_AFTER = 5


class PreloadBusy(PreloadError):
    """Too many preloads running and waiting: 429, try again later."""

    def __init__(self, message: str) -> None:
        super().__init__(429, message)


class Preloader:
    def __init__(self, config: PreloadConfig, registry: str) -> None:
        self.config = config
        self.registry = registry
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self._admitted = 0  # running plus waiting

    async def pull(self, repo_tag: str, runtime: str) -> str:
        """Have ``runtime`` pull ``repo:tag`` through this agent; returns the reference pulled.
        Raises :class:`PreloadBusy` at once when ``max_concurrent + max_queued`` are admitted."""
        limit = self.config.max_concurrent + self.config.max_queued
        if self._admitted >= limit:
            raise PreloadBusy(f"{self._admitted} preloads running or queued (limit {limit}); retry later")
        self._admitted += 1
        try:
            async with self._slots:
                return await self._pull(f"{self.registry}/{repo_tag}", runtime)
        finally:
            self._admitted -= 1

    async def _pull(self, ref: str, runtime: str) -> str:
        log.info("preloading", ref=ref, runtime=runtime)
        try:
            async with asyncio.timeout(self.config.timeout):
                if runtime == "docker":
                    await self._docker(ref)
                else:
                    await self._containerd(ref)
        except TimeoutError:
            raise PreloadError(504, f"{runtime} did not pull {ref} within {self.config.timeout:g}s") from None
        log.info("preloaded", ref=ref, runtime=runtime)
        return ref

    async def _docker(self, ref: str) -> None:
        image, _, tag = ref.rpartition(":")
        connector = aiohttp.UnixConnector(path=self.config.docker_socket)
        # No total or read limit of aiohttp's own (its default total is 300s, below a
        # preload's): the whole pull is bounded by ``preload.timeout`` in :meth:`pull`, and a
        # daemon pulling a large layer may send no progress line for a long while.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=DOCKER_CONNECT_TIMEOUT)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http, http.post(
                docker_api_url("/images/create"), params={"fromImage": image, "tag": tag}
            ) as resp:
                if resp.status != 200:
                    raise PreloadError(502, f"docker: {resp.status} {(await resp.text()).strip()}")
                async for line in resp.content:
                    if line.strip() and "error" in (event := json.loads(line)):
                        raise PreloadError(502, f"docker: {event['error']}")
        except aiohttp.ClientConnectionError as e:
            raise PreloadError(503, f"docker daemon unreachable at {self.config.docker_socket}: {e}") from None

    async def _containerd(self, ref: str) -> None:
        argv = [self.config.ctr, "--address", self.config.containerd_socket,
                "--namespace", self.config.containerd_namespace, "images", "pull", "--plain-http", ref]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as e:
            raise PreloadError(503, f"cannot run {self.config.ctr}: {e}") from None
        try:
            _, stderr = await proc.communicate()
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise PreloadError(502, f"containerd: {stderr.decode(errors='replace').strip()[-500:]}")
