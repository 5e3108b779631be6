#!/bin/sh
# Ray Serve's HAProxy ingress, with its operator listeners kept on loopback.
#
# Ray 2.60 renders `bind *:<stats port>` and `bind :<metrics port>` into the HAProxy config on
# every interface, whatever http_options.host says (RAY260.md). modelfoundry points
# RAY_SERVE_HAPROXY_BINARY_PATH here: this copies the config Ray wrote with those two listeners
# bound to 127.0.0.1, then runs the real HAProxy on the copy with Ray's other arguments unchanged.
# The HTTP frontend keeps the host Serve was given.
set -eu
real="${MODELFOUNDRY_HAPROXY_REAL_BINARY:?MODELFOUNDRY_HAPROXY_REAL_BINARY is not set; modelfoundry.cluster sets it}"
stats="${RAY_SERVE_HAPROXY_STATS_PORT:-8404}"
metrics="${RAY_SERVE_HAPROXY_METRICS_PORT:-9101}"
prev=""
n=$#
while [ "$n" -gt 0 ]; do
    arg=$1
    shift
    n=$((n - 1))
    if [ "$prev" = "-f" ]; then
        copy="$arg.loopback"
        sed -E "s/^([[:space:]]*bind[[:space:]]+)\*?:($stats|$metrics)([[:space:]]|\$)/\\1127.0.0.1:\\2\\3/" "$arg" >"$copy.tmp"
        mv "$copy.tmp" "$copy"
        arg=$copy
    fi
    set -- "$@" "$arg"
    prev=$arg
done
exec "$real" "$@"
