#!/usr/bin/env bash
# System tools the test suite and the deploy/ checks need, from Debian's packages:
#   promtool (and prometheus)  <- package `prometheus`   (check rules/metrics, rule unit tests, a real scrape)
#   kubectl                    <- package `kubernetes-client` (renders deploy/k8s with `kubectl kustomize`)
#   openssl                    <- package `openssl`          (self-signed certificates for the TLS tests)
#   wrk                        <- package `wrk`              (HTTP load for bench/overhead.py: a C load generator
#                                                             that is not the bottleneck of a fast endpoint)
#   h2load                     <- package `nghttp2-client`   (gRPC load for bench/overhead.py: the same, over HTTP/2)
# Idempotent: a tool already on PATH is left alone (another kubectl, e.g. a cloud SDK's, is kept:
# Debian's package would collide with its /usr/bin/kubectl). Uses sudo only when not root.
set -euo pipefail

missing=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
command -v kubectl >/dev/null || missing+=(kubernetes-client)
command -v openssl >/dev/null || missing+=(openssl)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null; then
    as_root=(sudo)
else
    echo "install-system-deps: need root or sudo to install: ${missing[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "install-system-deps: no apt-get here; install these Debian packages (or equivalents) yourself: ${missing[*]}" >&2
    exit 1
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
# Without recommends: the prometheus package would also pull in node-exporter and its collectors.
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v kubectl >/dev/null && command -v openssl >/dev/null \
    && command -v wrk >/dev/null && command -v h2load >/dev/null
