"""oras (the Python SDK, run in a child interpreter like every other client)."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.process import (
    DEFAULT_TIMEOUT,
    ClientError,
    run_client,
)

_ORAS_SCRIPT = r"""
import json, sys
import oras.client
op, args = sys.argv[1], json.loads(sys.argv[2])
client = oras.client.OrasClient(hostname=args["host"], insecure=True)
if op == "push":
    r = client.push(target=args["target"], files=args["files"], disable_path_validation=True, quiet=True)
    result = {"status": r.status_code, "digest": r.headers.get("Docker-Content-Digest")}
elif op == "pull":
    result = {"files": client.pull(target=args["target"], outdir=args["outdir"])}
elif op == "manifest":
    result = client.get_manifest(args["target"])
elif op == "attach":
    import oras.oci
    s = args["subject"]
    r = client.push(target=args["target"], files=args["files"], disable_path_validation=True, quiet=True,
                    manifest_config=args["config"], manifest_annotations=args["annotations"],
                    subject=oras.oci.Subject(s["mediaType"], s["digest"], s["size"]))
    result = {"status": r.status_code, "digest": r.headers.get("Docker-Content-Digest"),
              "subject": r.headers.get("OCI-Subject")}
elif op == "discover":
    r = client.do_request(args["url"], "GET", headers={"Accept": "application/vnd.oci.image.index.v1+json"})
    result = {"status": r.status_code, "headers": dict(r.headers), "index": r.json()}
else:
    raise SystemExit("unknown op " + op)
sys.stdout.write("\n@@ORAS-RESULT@@" + json.dumps(result) + "\n")
"""


@dataclass
class OrasPushResult:
    status: int
    manifest_digest: str | None


def _oras_target(host: str, target: str) -> str:
    return target if target.startswith(host + "/") else f"{host}/{target}"


def _oras(op: str, args: dict[str, Any], timeout: float) -> Any:
    proc = run_client([sys.executable, "-c", _ORAS_SCRIPT, op, json.dumps(args)], timeout=timeout)
    marker = "@@ORAS-RESULT@@"
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(marker):
            return json.loads(line[len(marker) :])
    raise ClientError(proc.args, proc.returncode, proc.stdout, proc.stderr + "\n(no result line from oras)")


def oras_push(
    host: str, target: str, files: Sequence[str | os.PathLike[str]], *, timeout: float = DEFAULT_TIMEOUT
) -> OrasPushResult:
    """Push ``files`` as an OCI artifact to ``host``/``target`` (``repo:tag``) over plain HTTP.

    Layer titles are the files' base names, which is what ``oras_pull``
    recreates.
    """
    res = _oras(
        "push",
        {"host": host, "target": _oras_target(host, target), "files": [os.path.abspath(f) for f in files]},
        timeout,
    )
    return OrasPushResult(status=int(res["status"]), manifest_digest=res.get("digest"))


def oras_pull(
    host: str, target: str, outdir: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT
) -> list[Path]:
    """Pull an artifact into ``outdir``; return the files written."""
    Path(outdir).mkdir(parents=True, exist_ok=True)
    res = _oras("pull", {"host": host, "target": _oras_target(host, target), "outdir": os.fspath(outdir)}, timeout)
    return [Path(f) for f in res["files"]]


def oras_manifest(host: str, target: str, *, timeout: float = 60.0) -> dict[str, Any]:
    """The artifact's manifest as oras sees it."""
    return dict(_oras("manifest", {"host": host, "target": _oras_target(host, target)}, timeout))


@dataclass
class OrasAttachResult:
    status: int
    manifest_digest: str | None
    subject_header: str | None


def oras_attach(
    host: str, target: str, files: Sequence[str | os.PathLike[str]], *, subject: Mapping[str, Any],
    artifact_type: str, annotations: Mapping[str, str], timeout: float = DEFAULT_TIMEOUT,
) -> OrasAttachResult:
    """``oras attach`` as far as the SDK goes: push ``files`` as an artifact whose manifest has
    ``subject`` (a descriptor: mediaType, digest, size) and an empty config of media type
    ``artifact_type`` (what referrers list as its artifactType). Unlike the CLI, the SDK needs a
    tag in ``target`` and cannot set the manifest's own ``artifactType`` field."""
    res = _oras("attach", {
        "host": host, "target": _oras_target(host, target), "files": [os.path.abspath(f) for f in files],
        "subject": dict(subject), "config": f"/nonexistent-oras-config:{artifact_type}",
        "annotations": dict(annotations),
    }, timeout)
    return OrasAttachResult(int(res["status"]), res.get("digest"), res.get("subject"))


def oras_discover(host: str, repo: str, subject: str, artifact_type: str | None = None,
                  *, timeout: float = 60.0) -> dict[str, Any]:
    """``oras discover``'s request, sent through the SDK's HTTP session (the SDK has no
    discover): ``GET /v2/<repo>/referrers/<subject>[?artifactType=]`` accepting an OCI index.
    Returns ``{"status", "headers", "index"}``."""
    url = f"http://{host}/v2/{repo}/referrers/{subject}"
    if artifact_type is not None:
        url += "?artifactType=" + urllib.parse.quote(artifact_type, safe="")
    return dict(_oras("discover", {"host": host, "url": url}, timeout))


# --------------------------------------------------------------------------
# pytest fixtures
# --------------------------------------------------------------------------
