"""Debian's distribution registry with its egress capped, the baseline of the fan-out benchmark.

It runs in a network namespace of its own, where an HTB class limits what leaves the
registry's port to the given rate (loopback inside the namespace, so nothing else on the
machine is shaped). Its storage is filled directly in distribution's filesystem layout
(a hard link to the benchmark's blob file), so no upload has to squeeze through the cap.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from bench.common import place_in_distribution
from kraken.core.digest import Digest

PORT = 5000


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


class CappedRegistry:
    def __init__(self, root: Path, rate: int, netns: str = "kraken-bench-registry") -> None:
        self.root = root
        self.rate = rate
        self.netns = netns
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{PORT}"

    def add_blob(self, repo: str, path: Path, digest: Digest) -> None:
        place_in_distribution(self.root / "data", repo, path, digest)

    def start(self) -> CappedRegistry:
        self.stop()
        self.root.mkdir(parents=True, exist_ok=True)
        _run("ip", "netns", "add", self.netns)
        _run("ip", "-n", self.netns, "link", "set", "lo", "up")
        # What leaves the registry's port goes through class 1:2 at the cap; the rest
        # (requests, ACKs) through 1:1, unshaped in practice.
        tc = ["ip", "netns", "exec", self.netns, "tc"]
        _run(*tc, "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1", "r2q", "1000")
        _run(*tc, "class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate", "10gbit")
        _run(*tc, "class", "add", "dev", "lo", "parent", "1:", "classid", "1:2", "htb",
             "rate", f"{self.rate * 8}bit", "ceil", f"{self.rate * 8}bit", "burst", "256k", "cburst", "256k")
        _run(*tc, "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "u32",
             "match", "ip", "sport", str(PORT), "0xffff", "flowid", "1:2")
        config = self.root / "config.yml"
        config.write_text("\n".join([
            "version: 0.1",
            "log: {level: warn}",
            f"storage: {{filesystem: {{rootdirectory: {self.root / 'data'}}}}}",
            f"http: {{addr: '127.0.0.1:{PORT}'}}",
        ]) + "\n")
        with open(self.root / "registry.log", "ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, shutil.which("docker-registry") or "docker-registry", "serve",
                 str(config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while subprocess.run(["ip", "netns", "exec", self.netns, "curl", "-sf", "-o", "/dev/null", f"{self.url}/v2/"],
                             check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {(self.root / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None
        subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)
