#!/usr/bin/env bash
# Instructions the broker executes per request, counted by valgrind's callgrind: a figure
# that does not depend on what else the machine is doing (requests/s and CPU time do), for
# telling whether a change made the request paths cheaper.
#
#   (c) GET /v1/proxy/controlroom/api/v1/items  -> an nginx upstream answering small JSON
#   (e) GET /v1/tokens/controlroom
#
# Run from the repository root:   bash bench/instructions.sh [BINARY]
#
# BINARY defaults to target/release/tokenbroker (built first unless SKIP_BUILD=1). The broker
# runs under callgrind; for each target, after an unmeasured warm-up, the counters are
# zeroed, wrk sends requests for MEASURE_SECONDS (default 4) over 8 connections, and the
# counters are dumped: instructions / requests is printed. The dumps stay in
# target/bench-instructions for callgrind_annotate. Installs valgrind, nginx, wrk and curl with apt-get if missing.
# Caveats: valgrind's CPU has no SHA extensions, so SHA-256 of the client key counts its
# software fallback (about 3.5k instructions here that the real CPU does in a few hundred);
# and instructions say nothing of system calls, which cost about as much again.
set -euo pipefail
SCRIPT=instructions.sh
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECONDS_MEASURED="${MEASURE_SECONDS:-4}"
[[ "$SECONDS_MEASURED" =~ ^[0-9]+$ && "$SECONDS_MEASURED" -ge 1 ]] || die "MEASURE_SECONDS must be whole seconds"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${CARGO_TARGET_DIR:-$ROOT/target}/bench-instructions"

missing=()
for tool in valgrind wrk curl; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
install_missing "${missing[@]}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
build_binaries "$ROOT"
TB="${1:-$TB}"
[[ -x "$TB" ]] || die "missing $TB"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tokenbroker-instructions.XXXXXX")"
chmod 755 "$WORK"
mkdir -p "$OUT" "$WORK/nginx/tmp"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

UPSTREAM_PORT="$(free_port)"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/nginx/tmp; proxy_temp_path $WORK/nginx/tmp;
    fastcgi_temp_path $WORK/nginx/tmp; uwsgi_temp_path $WORK/nginx/tmp; scgi_temp_path $WORK/nginx/tmp;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        location / { default_type application/json; return 200 '{"ok":true,"items":[1,2,3]}'; }
    }
}
EOF
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

start_emulator
PIDS+=("$EMU_PID")

new_keys
BROKER_PORT="$(free_port)"
cat >"$WORK/tokenbroker.toml" <<EOF
[server]
listen = "127.0.0.1:$BROKER_PORT"

[store]
path = "$WORK/tokenbroker.db"

[providers.controlroom]
type = "json_login"
login_url = "$EMU_URL/v1/authentication"
login_body = { username = "api-bot", apiKey = "demo-key" }
header = "X-Authorization"
prefix = ""
upstream = "http://127.0.0.1:$UPSTREAM_PORT"

[clients.bench]
key_sha256 = "$KEY_HASH"
providers = ["controlroom"]
EOF
TOKENBROKER_MASTER_KEY="$MASTER_KEY" valgrind --tool=callgrind \
    --callgrind-out-file="$OUT/callgrind.%p" "$TB" serve --config "$WORK/tokenbroker.toml" \
    2>"$WORK/valgrind.log" &
PIDS+=($!)
BROKER="http://127.0.0.1:$BROKER_PORT"
for _ in $(seq 300); do   # valgrind starts slowly: up to 60 s
    lcurl -f -o /dev/null "$BROKER/healthz" 2>/dev/null && break
    sleep 0.2
done
lcurl -f -o /dev/null -H "Authorization: Bearer $KEY" "$BROKER/v1/tokens/controlroom" \
    || die "the broker did not answer a token request"
VALGRIND_PID="$(pgrep -n -f "serve --config $WORK/tokenbroker.toml")"

printf '%-42s %9s  %s\n' target requests instructions/request
for target in "c /v1/proxy/controlroom/api/v1/items" "e /v1/tokens/controlroom"; do
    read -r label path <<<"$target"
    wrk -t1 -c8 -d2s -H "Authorization: Bearer $KEY" "$BROKER$path" >/dev/null
    callgrind_control -z "$VALGRIND_PID" >/dev/null 2>&1
    wrk -t1 -c8 "-d${SECONDS_MEASURED}s" -H "Authorization: Bearer $KEY" "$BROKER$path" >"$WORK/wrk.txt"
    callgrind_control -d "$VALGRIND_PID" >/dev/null 2>&1
    requests="$(awk '/requests in/ { print $1 }' "$WORK/wrk.txt")"
    non2xx="$(awk -F': *' '/Non-2xx/ { print $2 }' "$WORK/wrk.txt")"
    [[ -z "$non2xx" ]] || die "($label): $non2xx non-2xx answers"
    dump="$(ls -t "$OUT"/callgrind."$VALGRIND_PID".* | head -n 1)"
    cp "$dump" "$OUT/$label.callgrind"
    total="$(awk '/^summary:/ { print $2 }' "$dump")"
    printf '%-42s %9d  %d\n' "($label) $path" "$requests" "$((total / requests))"
done
echo "dumps: $OUT/{c,e}.callgrind  (callgrind_annotate --inclusive=yes $OUT/c.callgrind)"
