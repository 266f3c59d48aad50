#!/usr/bin/env bash
# End-to-end check of a multi-host cluster: push a generated image to the herd, pull it
# through an agent, compare digests and bytes.
#   test_multihost.sh <HERD> <AGENT>      HERD: herd IP (proxy on :15000); AGENT: agent host:port (registry)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../scripts/common.sh"
[ $# -eq 2 ] || die "usage: $0 <HERD_IP> <AGENT_HOST:PORT>"
herd=$1 agent=$2
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
tag="t$(date +%s)$$"

echo "== generating a 2-layer image"
"$KRAKEN_PYTHON" -m tests.support.ocigen "$work/oci" "$tag" 1 3 --seed "$$" >"$work/image.json"
want=$("$KRAKEN_PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifest_digest"])' "$work/image.json")

echo "== pushing to the herd at $herd:15000"
skopeo copy -q --dest-tls-verify=false "oci:$work/oci:$tag" "docker://$herd:15000/test/multihost:$tag"

echo "== pulling through the agent at $agent"
got=$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$agent/test/multihost:$tag")
skopeo copy -q --src-tls-verify=false "docker://$agent/test/multihost:$tag" "dir:$work/pulled"
for f in "$work/pulled"/*; do
  name=$(basename "$f")
  case "$name" in manifest.json|version) continue;; esac
  [ "sha256:$(sha256sum "$f" | cut -d' ' -f1)" = "sha256:$name" ] || die "FAIL: blob $name does not hash to its name"
done
[ "$got" = "$want" ] || die "FAIL: the agent serves manifest $got, the herd got $want"
echo "PASS: $agent served test/multihost:$tag with manifest $got, every blob verified"
