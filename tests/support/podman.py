"""podman with private containers.conf, storage.conf and registries.conf."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.ociarchive import normalize_tagged
from tests.support.ocigen import GeneratedImage
from tests.support.process import (
    DEFAULT_TIMEOUT,
    client_env,
    private_tmpdir,
    remove_tree,
    require_binary,
    run_client,
)
from tests.support.skopeo import registries_conf, with_private_blob_cache


class Podman:
    """podman with private containers.conf / storage.conf / registries.conf.

    Why private configs: podman's defaults write to /var/lib/containers,
    /run/containers and /run/libpod, and ``podman run`` on its default bridge
    changes the host's iptables and ip_forward.  Here storage (vfs by
    default: no mount helpers needed), runtime dirs, the event log and the
    network config live in a temp dir, containers default to the host network,
    and ulimits are set to values allowed without CAP_SYS_RESOURCE.

    podman 4.3 as root keeps its blob-info cache in the system location, not
    under the graph root, so image-transfer commands (``pull``, ``push``,
    ``image pull/push``) run through ``with_private_blob_cache`` with a cache
    private to this instance.  Other commands (``run``, ``rm`` ...) are not
    wrapped: their mounts must stay visible to later podman invocations.
    """

    _TRANSFER_COMMANDS = frozenset({"pull", "push"})

    def __init__(
        self,
        root: Path | None = None,
        *,
        insecure_registries: Sequence[str] = (),
        mirrors: Mapping[str, str] | None = None,
        storage_driver: str = "vfs",
    ) -> None:
        self.binary = require_binary("podman")
        self._own_root = root is None
        self.root = root if root is not None else private_tmpdir("podman")
        self.storage_driver = storage_driver
        for d in ("graph", "run", "tmp", "libpod-tmp", "networks", "volumes", "blob-cache"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.containers_conf = self.root / "containers.conf"
        self.storage_conf = self.root / "storage.conf"
        self.registries_conf = self.root / "registries.conf"
        self.policy = self.root / "policy.json"
        self._write_configs(insecure_registries, mirrors or {})

    def _write_configs(self, insecure: Sequence[str], mirrors: Mapping[str, str]) -> None:
        r = self.root
        self.containers_conf.write_text(
            "\n".join(
                [
                    "[containers]",
                    'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]',
                    'netns = "host"',
                    "[engine]",
                    'cgroup_manager = "cgroupfs"',
                    'events_logger = "file"',
                    f'events_logfile_path = "{r / "events.log"}"',
                    f'tmp_dir = "{r / "libpod-tmp"}"',
                    f'volume_path = "{r / "volumes"}"',
                    f'image_copy_tmp_dir = "{r / "tmp"}"',
                    "[network]",
                    f'network_config_dir = "{r / "networks"}"',
                    "",
                ]
            )
        )
        self.storage_conf.write_text(
            "\n".join(
                [
                    "[storage]",
                    f'driver = "{self.storage_driver}"',
                    f'runroot = "{r / "run"}"',
                    f'graphroot = "{r / "graph"}"',
                    "",
                ]
            )
        )
        self.registries_conf.write_text(registries_conf(insecure, mirrors))
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))

    def _env(self) -> dict[str, str]:
        return client_env(
            {
                "CONTAINERS_CONF": str(self.containers_conf),
                "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
                "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
                "TMPDIR": str(self.root / "tmp"),
            }
        )

    def run(
        self, *args: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``podman ARGS`` with the private configuration and the proxy trap."""
        argv = [self.binary, *[os.fspath(a) for a in args]]
        words = [os.fspath(a) for a in args[:2]]
        if words and words[0] == "image":
            words = words[1:]
        if words and words[0] in self._TRANSFER_COMMANDS:
            argv = with_private_blob_cache(self.root / "blob-cache", argv)
        return run_client(argv, env=self._env(), timeout=timeout, check=check)

    def pull(self, ref: str, *, tls_verify: bool = False) -> str:
        """Pull ``ref``; return the image ID podman prints."""
        out = self.run(
            "pull", "--quiet", f"--tls-verify={'true' if tls_verify else 'false'}",
            f"--signature-policy={self.policy}", ref,
        ).stdout
        return out.strip().splitlines()[-1]

    def push(self, ref: str, dest: str | None = None, *, tls_verify: bool = False) -> str:
        """Push ``ref`` (to ``dest`` if given); return the pushed manifest digest."""
        digestfile = self.root / "tmp" / f"digest-{os.getpid()}-{time.monotonic_ns()}"
        args = [
            "push", "--quiet", f"--tls-verify={'true' if tls_verify else 'false'}",
            f"--signature-policy={self.policy}", f"--digestfile={digestfile}", ref,
        ]
        if dest:
            args.append(dest)
        self.run(*args)
        try:
            return digestfile.read_text().strip()
        finally:
            digestfile.unlink(missing_ok=True)

    def tag(self, src: str, dst: str) -> None:
        self.run("tag", src, dst)

    def rmi(self, *refs: str, force: bool = True) -> None:
        self.run("rmi", *(["--force"] if force else []), *refs)

    def inspect_image(self, ref: str) -> dict[str, Any]:
        return dict(json.loads(self.run("image", "inspect", ref).stdout)[0])

    def image_digest(self, ref: str) -> str:
        """Manifest digest podman recorded for ``ref``'s repository.

        ``Digest`` alone is the digest of whichever manifest first brought the image in, which
        differs when the same image was pulled or pushed under another manifest before.
        """
        info = self.inspect_image(ref)
        repo = normalize_tagged(ref).rsplit(":", 1)[0]
        matching = [d.partition("@")[2] for d in info.get("RepoDigests") or [] if d.partition("@")[0] == repo]
        if len(matching) == 1:
            return matching[0]
        return str(info["Digest"])

    def load_oci(self, image: GeneratedImage, name: str) -> str:
        """Copy a generated OCI layout into podman's storage as ``name``; return the image ID."""
        image_id = self.pull(image.oci_ref)
        self.tag(image_id, normalize_tagged(name))
        return image_id

    def close(self) -> None:
        """Remove the private tree (podman has no daemon; pull/push leave no processes)."""
        if self._own_root:
            remove_tree(self.root)

    def __enter__(self) -> Podman:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# oras (Python SDK, run in a subprocess)
# --------------------------------------------------------------------------

# The SDK runs in a child interpreter so that it gets the proxy-trap
# environment like every other client, its stderr can be attached to errors,
