"""A standalone containerd driven with ctr."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.ociarchive import normalize_tagged, write_oci_archive
from tests.support.ocigen import GeneratedImage
from tests.support.process import (
    DEFAULT_TIMEOUT,
    TMP_PREFIX,
    BackgroundProcess,
    client_env,
    kill_pid,
    pids_mentioning,
    private_tmpdir,
    remove_tree,
    require_binary,
    run_client,
    unmount_all_under,
)
from tests.support.waiting import wait_until


class Containerd:
    """A standalone containerd in a private temp dir, driven with ``ctr``.

    Why standalone (not dockerd's): its registry host configuration
    (``hosts.toml`` under ``hosts_dir``) is ours to write, e.g. to point the
    Docker Hub namespace at a mirror.  The CRI plugin is disabled because ctr
    does not need it and it would otherwise try to set up CNI networking.
    """

    def __init__(self, root: Path | None = None, *, start_timeout: float = 30.0) -> None:
        self.binary = require_binary("containerd")
        self.ctr_binary = require_binary("ctr")
        self._own_root = root is None
        self.root = root if root is not None else private_tmpdir("containerd")
        self.start_timeout = start_timeout
        self.process: BackgroundProcess | None = None
        self.address = self.root / "containerd.sock"
        self.hosts_dir = self.root / "certs.d"

    @property
    def log_path(self) -> Path:
        return self.root / "containerd.log"

    def _config(self) -> str:
        return "\n".join(
            [
                "version = 2",
                f'root = "{self.root / "root"}"',
                f'state = "{self.root / "state"}"',
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                "[grpc]",
                f'  address = "{self.address}"',
                "[ttrpc]",
                f'  address = "{self.address}.ttrpc"',
                '[plugins."io.containerd.internal.v1.opt"]',
                f'  path = "{self.root / "opt"}"',
                '[plugins."io.containerd.grpc.v1.cri".registry]',
                f'  config_path = "{self.hosts_dir}"',
                "",
            ]
        )

    def _ready(self) -> bool:
        assert self.process is not None
        if not self.address.exists():
            return False
        r = run_client([self.ctr_binary, "--address", self.address, "version"], timeout=10, check=False)
        return r.returncode == 0

    def start(self) -> Containerd:
        """Start containerd and wait until ``ctr version`` reaches the server."""
        for d in ("root", "state", "opt"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "config.toml"
        cfg.write_text(self._config())
        self.process = BackgroundProcess([self.binary, "--config", cfg], log_path=self.log_path, env=client_env())
        try:
            wait_until(self._ready, self.start_timeout, message=f"containerd at {self.address}",
                       alive=self.process.exited, details=self.process.log)
        except BaseException:
            self.stop()
            raise
        return self

    def set_mirror(
        self,
        mirror_url: str,
        *,
        namespace_host: str = "docker.io",
        server: str = "https://registry-1.docker.io",
        capabilities: Sequence[str] = ("pull", "resolve"),
    ) -> Path:
        """Write ``hosts.toml`` so pulls of ``namespace_host/...`` go to ``mirror_url`` first.

        Only used by ``ctr`` when ``--hosts-dir`` is given (``Ctr.pull(...,
        use_hosts_dir=True)``).  containerd adds ``?ns=<namespace_host>`` to
        mirror requests.
        """
        d = self.hosts_dir / namespace_host
        d.mkdir(parents=True, exist_ok=True)
        caps = ", ".join(f'"{c}"' for c in capabilities)
        path = d / "hosts.toml"
        path.write_text(f'server = "{server}"\n[host."{mirror_url}"]\n  capabilities = [{caps}]\n')
        return path

    def ctr(self, namespace: str = "kraken-test") -> Ctr:
        """A ``Ctr`` client bound to this daemon."""
        return Ctr(self.address, namespace=namespace, hosts_dir=self.hosts_dir)

    def stop(self) -> None:
        """Stop by PID (plus any shim mentioning our root), unmount, remove the temp dir."""
        try:
            if self.process is not None:
                self.process.stop(timeout=30)
            for pid in pids_mentioning(str(self.root)):
                kill_pid(pid)
        finally:
            unmount_all_under(self.root)
            if self._own_root:
                remove_tree(self.root)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Ctr:
    """The ``ctr`` CLI bound to one containerd socket and namespace."""

    def __init__(
        self, address: str | os.PathLike[str], *, namespace: str = "kraken-test", hosts_dir: Path | None = None
    ) -> None:
        self.binary = require_binary("ctr")
        self.address = os.fspath(address)
        self.namespace = namespace
        self.hosts_dir = hosts_dir

    def run(
        self, *args: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT, binary: bool = False
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``ctr ARGS`` against this socket/namespace, with the proxy trap."""
        argv = [self.binary, "--address", self.address, "--namespace", self.namespace, *args]
        return run_client(argv, timeout=timeout, binary=binary)

    def pull(self, ref: str, *, plain_http: bool = True, use_hosts_dir: bool = False, unpack: bool = True) -> str:
        """Pull ``ref``; return the manifest digest now recorded for it.

        ``unpack=True`` is ``ctr images pull`` (fetch + unpack into the
        overlayfs snapshotter, what a node does before running); ``unpack=False``
        is ``ctr content fetch`` (content store only: cheaper when a test only
        cares about the registry side).
        """
        args: list[str] = ["images", "pull"] if unpack else ["content", "fetch"]
        if plain_http:
            args.append("--plain-http")
        if use_hosts_dir:
            if self.hosts_dir is None:
                raise ValueError("no hosts_dir configured")
            args += ["--hosts-dir", str(self.hosts_dir)]
        self.run(*args, ref)
        return self.image_digest(ref)

    def push(self, ref: str, *, plain_http: bool = True, local: str | None = None) -> None:
        """``ctr images push REF [LOCAL]`` (LOCAL defaults to REF)."""
        args: list[str] = ["images", "push"]
        if plain_http:
            args.append("--plain-http")
        args.append(ref)
        if local:
            args.append(local)
        self.run(*args)

    def tag(self, src: str, dst: str) -> None:
        self.run("images", "tag", "--force", src, dst)

    def rmi(self, *refs: str) -> None:
        self.run("images", "rm", *refs)

    def images(self) -> dict[str, str]:
        """Map of image name -> manifest (or index) digest."""
        out = self.run("images", "ls").stdout.splitlines()
        result = {}
        for line in out[1:]:
            cols = line.split()
            if len(cols) >= 3 and cols[2].startswith("sha256:"):
                result[cols[0]] = cols[2]
        return result

    def image_digest(self, ref: str) -> str:
        """Manifest digest of ``ref`` as containerd recorded it."""
        images = self.images()
        for name in (ref, normalize_tagged(ref)):
            if name in images:
                return images[name]
        raise KeyError(f"{ref} not in containerd namespace {self.namespace}: {sorted(images)}")

    def content_get(self, digest: str) -> bytes:
        """Raw bytes of a blob in the content store."""
        return bytes(self.run("content", "get", digest, binary=True).stdout)

    def import_oci(self, image: GeneratedImage, ref: str) -> str:
        """Import a generated image as ``ref`` (exact bytes, no conversion); return its digest.

        Builds an OCI archive straight from the layout (so the manifest and
        blobs are byte-identical) with ``ref`` as the ref name, then
        ``ctr images import --no-unpack``.
        """
        ref = normalize_tagged(ref)
        with tempfile.TemporaryDirectory(prefix=TMP_PREFIX + "ctr-import-") as td:
            archive = Path(td) / "image.tar"
            write_oci_archive(image, ref, archive)
            self.run("images", "import", "--no-unpack", archive)
        return self.image_digest(ref)
