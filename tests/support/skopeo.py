"""skopeo with private configuration, and checks of what it pulled."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.ocigen import GeneratedImage
from tests.support.process import (
    DEFAULT_TIMEOUT,
    client_env,
    private_tmpdir,
    remove_tree,
    require_binary,
    run_client,
)
from tests.support.registry_http import sha256_bytes, sha256_file

_SYSTEM_BLOB_CACHE_DIR = "/var/lib/containers/cache"
# Runs the command in a private mount namespace with a private directory bound
# over the system blob-info cache dir (see Skopeo's docstring for why).
_CACHE_WRAPPER = 'mkdir -p "$2" && mount --bind "$1" "$2" && shift 2 && exec "$@"'
_unshare_ok: bool | None = None


def _unshare_works() -> bool:
    """Whether we may create mount namespaces (root with CAP_SYS_ADMIN)."""
    global _unshare_ok
    if _unshare_ok is None:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            _unshare_ok = False
        else:
            r = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False
            )
            _unshare_ok = r.returncode == 0
    return _unshare_ok


def with_private_blob_cache(cache_dir: Path, argv: Sequence[str]) -> list[str]:
    """Wrap ``argv`` so containers/image's blob-info cache lives in ``cache_dir``.

    skopeo 1.9 and podman 4.3 running as root always use
    ``/var/lib/containers/cache/blob-info-cache-v1.boltdb`` (no flag or
    environment variable moves it), and that cache makes later pushes try
    cross-repo mounts or skip uploads of blobs seen before, so sharing it makes
    tests depend on each other.  The wrapper runs the command under ``unshare
    --mount`` with ``cache_dir`` bind-mounted over that path; the mount exists
    only inside the command's private mount namespace and vanishes with it.
    The (empty) mount-point directory is created on the host if missing, as
    the clients themselves would.  Without root/unshare, ``argv`` is returned
    unchanged and the cache is shared.
    """
    if not _unshare_works():
        return list(argv)
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", _CACHE_WRAPPER, "sh", str(cache_dir), _SYSTEM_BLOB_CACHE_DIR, *argv,
    ]


class Skopeo:
    """skopeo with private registries.conf, policy, tmpdir and blob-info cache.

    The blob-info cache cannot be relocated by flag or environment in skopeo
    1.9 (``--blob-cache`` does not exist), so commands run through
    ``with_private_blob_cache``; ``cache_isolated`` says whether that was
    possible (it needs root and ``unshare``).

    An instance keeps one cache across its commands (useful to test mounts);
    the module-level ``skopeo_copy`` etc. use a fresh instance per call.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        insecure_registries: Sequence[str] = (),
        mirrors: Mapping[str, str] | None = None,
        isolate_blob_cache: bool = True,
    ) -> None:
        self.binary = require_binary("skopeo")
        self._own_root = root is None
        self.root = root if root is not None else private_tmpdir("skopeo")
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache_dir = self.root / "blob-cache"
        self.tmp_dir = self.root / "tmp"
        self.cache_dir.mkdir(exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)
        self.registries_conf = self.root / "registries.conf"
        self.registries_conf.write_text(registries_conf(insecure_registries, mirrors or {}))
        self.policy = self.root / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.cache_isolated = isolate_blob_cache and _unshare_works()

    def _argv(self, args: Sequence[str | os.PathLike[str]]) -> list[str]:
        base = [
            self.binary,
            "--registries-conf",
            str(self.registries_conf),
            "--policy",
            str(self.policy),
            "--tmpdir",
            str(self.tmp_dir),
            *[os.fspath(a) for a in args],
        ]
        return with_private_blob_cache(self.cache_dir, base) if self.cache_isolated else base

    def run(
        self, *args: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT, binary: bool = False
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``skopeo ARGS`` with the private config and the proxy trap."""
        env = client_env({"CONTAINERS_REGISTRIES_CONF": str(self.registries_conf), "TMPDIR": str(self.tmp_dir)})
        return run_client(self._argv(args), env=env, timeout=timeout, binary=binary)

    def copy(
        self,
        src: str,
        dst: str,
        *,
        tls_verify: bool = False,
        extra_args: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[Any]:
        """``skopeo copy SRC DST``; TLS verification off by default (plain-HTTP test registries)."""
        tv = "true" if tls_verify else "false"
        return self.run(
            "copy", f"--src-tls-verify={tv}", f"--dest-tls-verify={tv}", *extra_args, src, dst, timeout=timeout
        )

    def inspect_raw(self, ref: str, *, tls_verify: bool = False, config: bool = False) -> bytes:
        """Exact manifest bytes (or config bytes with ``config=True``) of ``ref``."""
        args = ["inspect", f"--tls-verify={'true' if tls_verify else 'false'}", "--raw"]
        if config:
            args.append("--config")
        return bytes(self.run(*args, ref, binary=True).stdout)

    def inspect(self, ref: str, *, tls_verify: bool = False) -> dict[str, Any]:
        """``skopeo inspect --no-tags`` as JSON (``--no-tags`` avoids listing tags upstream)."""
        out = self.run("inspect", f"--tls-verify={'true' if tls_verify else 'false'}", "--no-tags", ref).stdout
        return dict(json.loads(out))

    def list_tags(self, ref: str, *, tls_verify: bool = False) -> list[str]:
        out = self.run("list-tags", f"--tls-verify={'true' if tls_verify else 'false'}", ref).stdout
        return list(json.loads(out).get("Tags") or [])

    def close(self) -> None:
        if self._own_root:
            remove_tree(self.root)

    def __enter__(self) -> Skopeo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def registries_conf(insecure: Sequence[str], mirrors: Mapping[str, str]) -> str:
    """registries.conf (v2) text: no unqualified search, given hosts insecure, optional mirrors.

    ``mirrors`` maps a prefix (e.g. ``docker.io``) to a mirror host
    (``127.0.0.1:5000``); mirrors are always marked insecure (plain HTTP).
    """
    lines = ["unqualified-search-registries = []", ""]
    for host in insecure:
        if host in mirrors:
            continue
        lines += ["[[registry]]", f'location = "{host}"', "insecure = true", ""]
    for prefix, mirror in mirrors.items():
        lines += [
            "[[registry]]",
            f'prefix = "{prefix}"',
            f'location = "{prefix}"',
            "[[registry.mirror]]",
            f'location = "{mirror}"',
            "insecure = true",
            "",
        ]
    return "\n".join(lines)


def skopeo_copy(
    src: str, dst: str, *, tls_verify: bool = False, extra_args: Sequence[str] = ()
) -> subprocess.CompletedProcess[Any]:
    """One-shot ``skopeo copy`` with its own fresh config and blob-info cache."""
    with Skopeo() as sk:
        return sk.copy(src, dst, tls_verify=tls_verify, extra_args=extra_args)


def skopeo_inspect_raw(ref: str, *, tls_verify: bool = False) -> bytes:
    """One-shot ``skopeo inspect --raw``: the exact manifest bytes served for ``ref``."""
    with Skopeo() as sk:
        return sk.inspect_raw(ref, tls_verify=tls_verify)


def skopeo_pull_dir(ref: str, dest: Path, *, tls_verify: bool = False) -> Path:
    """Copy ``ref`` (e.g. ``docker://host/repo:tag``) into a ``dir:`` layout at ``dest``.

    A ``dir:`` layout stores every blob under its hex digest plus the exact
    manifest, which is ideal for byte-level comparison.
    """
    skopeo_copy(ref, f"dir:{dest}", tls_verify=tls_verify)
    return dest


def dir_blobs(dir_path: Path) -> dict[str, Path]:
    """Blobs of a skopeo ``dir:`` layout, keyed by ``sha256:<hex>`` (from the file name)."""
    out = {}
    for p in dir_path.iterdir():
        if re.fullmatch(r"[0-9a-f]{64}", p.name):
            out["sha256:" + p.name] = p
    return out


def assert_dir_matches_image(dir_path: Path, image: GeneratedImage) -> None:
    """Assert a ``dir:`` copy holds exactly the generated manifest and blobs, byte for byte.

    Checks the manifest bytes (hence the manifest digest), that every blob the
    image references is present, and that each file's sha256 equals its name.
    """
    manifest = (dir_path / "manifest.json").read_bytes()
    assert sha256_bytes(manifest) == image.manifest_digest, "manifest digest differs"
    assert manifest == image.manifest, "manifest bytes differ"
    blobs = dir_blobs(dir_path)
    assert set(blobs) == set(image.blob_digests), f"blob set differs: {sorted(blobs)} vs {image.blob_digests}"
    for digest, path in blobs.items():
        assert sha256_file(path) == digest, f"content of {path} does not match its digest"
        assert path.read_bytes() == image.blob_path(digest).read_bytes(), f"blob {digest} differs from generated"


# --------------------------------------------------------------------------
# dockerd
# --------------------------------------------------------------------------
