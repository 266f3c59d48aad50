"""dockerd, started by hand in a private directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.ociarchive import normalize_tagged
from tests.support.ocigen import GeneratedImage
from tests.support.process import (
    DEFAULT_TIMEOUT,
    NO_PROXY_HOSTS,
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
from tests.support.skopeo import skopeo_copy
from tests.support.waiting import wait_until

#: Where dockerd reads registry CAs and client certificates (not configurable).
DOCKER_CERTS_DIR = "/etc/docker/certs.d"
# Binds $1 over $2 in the command's private mount namespace, then runs the rest.
_CERTS_WRAPPER = 'mkdir -p "$2" && mount --bind "$1" "$2" && shift 2 && exec "$@"'


class Dockerd:
    """A dockerd started by hand in a private temp dir (no systemd needed).

    Why by hand: tests need a daemon whose ``registry-mirrors`` and
    ``insecure-registries`` point at a registry chosen at run time, and which
    leaves nothing behind.  It runs with ``iptables: false`` and ``bridge:
    none`` so the host's network configuration is never touched; containers
    can use ``--network host`` or ``none``.  dockerd starts its own containerd
    under the exec-root.

    ``storage_driver=None`` tries overlay2 first and falls back to vfs if the
    daemon does not come up with it.  ``netns`` (a name under /run/netns)
    starts the daemon inside that network namespace via ``nsenter --net``
    (``ip netns exec`` would hide the cgroup mounts dockerd needs).

    ``certs_dir`` is where this daemon reads registry CAs (``<host:port>/ca.crt``).
    dockerd 20.10 has no option for it: it always reads ``/etc/docker/certs.d``
    (rootless mode aside), on every registry call.  So the daemon runs in a
    private mount namespace (``unshare --mount``) with ``certs_dir`` bound over
    that path: the host's /etc/docker is never written (only the empty mount
    point is created if missing, as dockerd would), and files added to
    ``certs_dir`` later are seen at the next push or pull.  ``no_proxy`` adds
    addresses the proxy trap must let through (a registry on a non-loopback
    address: dockerd treats 127.0.0.0/8 as insecure and never verifies there).
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        insecure_registries: Sequence[str] = (),
        registry_mirrors: Sequence[str] = (),
        storage_driver: str | None = None,
        netns: str | None = None,
        extra_config: Mapping[str, Any] | None = None,
        certs_dir: Path | None = None,
        no_proxy: Sequence[str] = (),
        start_timeout: float = 60.0,
    ) -> None:
        self.dockerd_binary = require_binary("dockerd")
        self.docker_binary = require_binary("docker")
        self._own_root = root is None
        self.root = root if root is not None else private_tmpdir("dockerd")
        self.insecure_registries = list(insecure_registries)
        self.registry_mirrors = list(registry_mirrors)
        self.storage_driver = storage_driver
        self.netns = netns
        self.extra_config = dict(extra_config or {})
        self.certs_dir = certs_dir
        self.no_proxy = list(no_proxy)
        self.start_timeout = start_timeout
        self.process: BackgroundProcess | None = None
        self.active_storage_driver: str | None = None
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.socket_path = self.root / "docker.sock"
        self.pidfile = self.root / "dockerd.pid"
        self.docker_config_dir = self.root / "cli-config"
        self.tmp_dir = self.root / "tmp"

    @property
    def host(self) -> str:
        """Value for ``docker -H`` / ``DOCKER_HOST``."""
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    @property
    def containerd_socket(self) -> Path:
        """dockerd's own containerd (usable with ``Ctr``, namespace ``moby``)."""
        return self.exec_root / "containerd" / "containerd.sock"

    def _write_config(self, driver: str) -> Path:
        cfg: dict[str, Any] = {
            "storage-driver": driver,
            "data-root": str(self.data_root),
            "exec-root": str(self.exec_root),
            "pidfile": str(self.pidfile),
            "hosts": [self.host],
            "iptables": False,
            "ip-masq": False,
            "bridge": "none",
            "registry-mirrors": self.registry_mirrors,
            "insecure-registries": self.insecure_registries,
            # dockerd 20.10 otherwise writes its libtrust key to /etc/docker/key.json.
            "deprecated-key-path": str(self.root / "key.json"),
        }
        cfg.update(self.extra_config)
        path = self.root / "daemon.json"
        path.write_text(json.dumps(cfg, indent=2))
        return path

    def _env(self) -> dict[str, str]:
        extra = {"DOCKER_CONFIG": str(self.docker_config_dir), "TMPDIR": str(self.tmp_dir)}
        if self.no_proxy:
            hosts = ",".join([NO_PROXY_HOSTS, *self.no_proxy])
            extra.update(NO_PROXY=hosts, no_proxy=hosts)
        return client_env(extra)

    def _ready(self) -> bool:
        assert self.process is not None
        if not self.socket_path.exists():
            return False
        r = run_client(
            [self.docker_binary, "-H", self.host, "info", "--format", "{{.Driver}}"],
            env=self._env(),
            timeout=10,
            check=False,
        )
        if r.returncode == 0 and r.stdout.strip():
            self.active_storage_driver = r.stdout.strip()
            return True
        return False

    def _start_with(self, driver: str) -> None:
        for d in (self.data_root, self.exec_root, self.docker_config_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        cfg = self._write_config(driver)
        argv: list[str] = [self.dockerd_binary, f"--config-file={cfg}"]
        if self.certs_dir is not None:
            self.certs_dir.mkdir(parents=True, exist_ok=True)
            argv = ["unshare", "--mount", "--propagation", "private", "--",
                    "sh", "-c", _CERTS_WRAPPER, "sh", str(self.certs_dir), DOCKER_CERTS_DIR, *argv]
        if self.netns:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", *argv]
        self.process = BackgroundProcess(argv, log_path=self.log_path, env=self._env())
        wait_until(self._ready, self.start_timeout, 0.1, message=f"dockerd at {self.host}",
                   alive=self.process.exited, details=self.process.log)

    def start(self) -> Dockerd:
        """Start the daemon and wait until ``docker info`` answers."""
        drivers = [self.storage_driver] if self.storage_driver else ["overlay2", "vfs"]
        errors = []
        for driver in drivers:
            try:
                self._start_with(driver)
                return self
            except (RuntimeError, TimeoutError) as exc:
                errors.append(f"[{driver}] {exc}")
                self._stop_daemon()
                # A failed overlay2 attempt may leave a half-initialised data-root behind.
                remove_tree(self.data_root)
                remove_tree(self.exec_root)
        self.stop()
        raise RuntimeError("could not start dockerd:\n" + "\n".join(errors))

    def run(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this daemon; raise ``ClientError`` (with stderr) on failure."""
        return run_client(
            [self.docker_binary, "-H", self.host, *args], env=self._env(), timeout=timeout, check=check, input=input
        )

    def pull(self, ref: str) -> None:
        self.run("pull", "-q", ref)

    def push(self, ref: str) -> str:
        """Push ``ref``; return the manifest digest docker reports."""
        out = self.run("push", ref).stdout
        m = re.search(r"digest: (sha256:[0-9a-f]{64})", out)
        if not m:
            raise RuntimeError(f"no digest in docker push output:\n{out}")
        return m.group(1)

    def tag(self, src: str, dst: str) -> None:
        self.run("tag", src, dst)

    def rmi(self, *refs: str, force: bool = True) -> None:
        self.run("rmi", *(["-f"] if force else []), *refs)

    def inspect_image(self, ref: str) -> dict[str, Any]:
        return dict(json.loads(self.run("image", "inspect", ref).stdout)[0])

    def image_id(self, ref: str) -> str:
        """Image ID, which equals the config digest."""
        return str(self.inspect_image(ref)["Id"])

    def repo_digests(self, ref: str) -> list[str]:
        """``repo@sha256:<manifest digest>`` entries recorded by pulls/pushes."""
        return list(self.inspect_image(ref).get("RepoDigests") or [])

    def has_image(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def load_oci(self, image: GeneratedImage, name: str) -> str:
        """Load a generated OCI image into the daemon as ``name``; return the image ID.

        dockerd 20.10 cannot load an OCI layout, so skopeo converts it to a
        docker-archive first (layer blobs are kept as they are).
        """
        name = normalize_tagged(name)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".tar", dir=self.tmp_dir)
        os.close(fd)
        os.unlink(tmp)  # skopeo refuses to overwrite an existing archive
        try:
            skopeo_copy(image.oci_ref, f"docker-archive:{tmp}:{name}")
            self.run("load", "-q", "-i", tmp)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return self.image_id(name)

    def _stop_daemon(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=30)
        # dockerd normally stops its containerd (and shims); anything that still
        # refers to our private root is ours and is stopped by PID.
        for pid in pids_mentioning(str(self.root)):
            kill_pid(pid)

    def stop(self) -> None:
        """Stop dockerd by PID, stop leftovers, unmount nsfs/overlay leftovers, remove dirs."""
        try:
            self._stop_daemon()
        finally:
            unmount_all_under(self.root)
            if self._own_root:
                remove_tree(self.root)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------
# containerd + ctr
# --------------------------------------------------------------------------
