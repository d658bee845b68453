# What the bench/ scripts share: sourced by them, not run. A script sets SCRIPT (its name,
# for messages) and, before starting processes, WORK (its temp dir); it keeps its own
# cleanup, since what it starts differs.

die() { echo "${SCRIPT:-bench}: $*" >&2; exit 1; }

# What start_broker starts the broker under, e.g. (taskset -c 1); none unless a script sets it.
SERVER_PIN=()

# curl that only ever talks to loopback, never through a proxy, and never hangs.
lcurl() { curl --noproxy '*' --silent --show-error --max-time "${LCURL_MAX_TIME:-5}" "$@"; }

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 40000))
        if command -v ss >/dev/null 2>&1; then
            [[ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]] && { echo "$p"; return; }
        elif ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"; return
        fi
    done
    die "no free port found"
}

# build_binaries ROOT: builds the release binaries unless SKIP_BUILD=1; sets BIN, TB
# (the broker) and EMU (the emulator), honouring CARGO_TARGET_DIR as cargo does.
build_binaries() {
    local root="$1"
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs) first"
        echo "==> cargo build --release -p tokenbroker -p tokenbroker-emulator"
        timeout 3600 cargo build --release -p tokenbroker -p tokenbroker-emulator
    fi
    BIN="${CARGO_TARGET_DIR:-$root/target}/release"
    TB="$BIN/tokenbroker"
    EMU="$BIN/tokenbroker-emulator"
    [[ -x "$TB" && -x "$EMU" ]] || die "missing $TB or $EMU"
}

# start_emulator: the Control Room emulator with 1-hour tokens (no refresh falls inside a
# benchmark), on a port it picks itself and prints as the first line of its stdout; sets
# EMU_PID and EMU_URL.
start_emulator() {
    echo "==> starting the emulator"
    "$EMU" --listen 127.0.0.1:0 --lifetime 1h --login-latency 0ms --user api-bot:demo-key \
        >"$WORK/emulator.out" 2>"$WORK/emulator.log" &
    EMU_PID=$!
    EMU_URL=""
    for _ in $(seq 100); do
        EMU_URL="$(head -n 1 "$WORK/emulator.out" 2>/dev/null || true)"
        [[ "$EMU_URL" == http://127.0.0.1:* ]] && return 0
        kill -0 "$EMU_PID" 2>/dev/null || die "the emulator exited"
        sleep 0.1
    done
    die "the emulator did not report its address within 10 s"
}

# new_keys: a throwaway client key and master key for this run only; sets KEY, KEY_HASH
# (for the config) and MASTER_KEY (for the broker's environment).
new_keys() {
    "$TB" keys new bench >"$WORK/keys.txt"
    KEY="$(grep -m1 '^tbk_' "$WORK/keys.txt")"
    KEY_HASH="$(sed -n 's/^key_sha256 = "\([0-9a-f]*\)"$/\1/p' "$WORK/keys.txt")"
    [[ -n "$KEY" && ${#KEY_HASH} == 64 ]] || die "could not read the key from 'tokenbroker keys new'"
    MASTER_KEY="$("$TB" keys master | grep -v '^#' | grep -m1 .)"
    [[ -n "$MASTER_KEY" ]] || die "could not read the key from 'tokenbroker keys master'"
}

# Every broker process start_broker spawned (ready or not), and their logs, for cleanup.
BROKER_PIDS=()
BROKER_LOGS=()

# start_broker NAME STORE_TOML [PROVIDER_LINES [NAME=VALUE...]]: a broker on a free port
# (another one is tried if the port is taken between the check and the bind), serving
# $PROVIDER (the emulated Control Room: header X-Authorization, no prefix, plus
# PROVIDER_LINES) to the client key of new_keys, with that [store] body and the given extra
# environment; its config is $WORK/NAME.toml and its log $WORK/NAME.log. Sets STARTED_URL
# and STARTED_PID once /readyz answers 200 and lists the provider (so the port is ours).
start_broker() {
    local name="$1" store="$2" extra="${3:-}" port pid attempt
    shift $(($# < 3 ? $# : 3))
    STARTED_URL=""
    STARTED_PID=""
    for attempt in 1 2 3 4 5; do
        port="$(free_port)"
        cat >"$WORK/$name.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
${BROKER_SERVER_EXTRA:-}

[store]
$store

[providers.$PROVIDER]
type = "json_login"
login_url = "$EMU_URL/v1/authentication"
login_body = { username = "api-bot", apiKey = "demo-key" }
header = "X-Authorization"
prefix = ""
$extra

[clients.bench]
key_sha256 = "$KEY_HASH"
providers = ["$PROVIDER"]
TOML
        "${SERVER_PIN[@]}" env "$@" TOKENBROKER_MASTER_KEY="$MASTER_KEY" "$TB" serve --config "$WORK/$name.toml" \
            >"$WORK/$name.log" 2>&1 &
        pid=$!
        BROKER_PIDS+=("$pid")
        BROKER_LOGS+=("$WORK/$name.log")
        for _ in $(seq 150); do   # up to 15 s
            if lcurl -o "$WORK/$name.ready" --fail "http://127.0.0.1:$port/readyz" 2>/dev/null \
                && grep -q "\"$PROVIDER\"" "$WORK/$name.ready"; then
                STARTED_URL="http://127.0.0.1:$port"
                STARTED_PID="$pid"
                return 0
            fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        echo "    $name not ready on port $port (attempt $attempt), retrying" >&2
    done
    die "broker $name did not become ready (its log: $name.log)"
}

# install_missing PACKAGE...: installs the given Debian packages with apt-get (needs root),
# or dies saying what to install by hand. Call with the packages whose tools are missing.
install_missing() {
    (($#)) || return 0
    command -v apt-get >/dev/null 2>&1 || die "need $* and there is no apt-get: install them by hand"
    [[ "$(id -u)" == 0 ]] || die "need $*: run as root, or install them by hand"
    echo "==> installing $*"
    timeout 600 apt-get update -qq
    # The nginx package may try to start a system nginx on port 80; the scripts never use it.
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "$@" >/dev/null
}

# check_issued_once BROKER_URL BROKER_PID: sets ISSUANCES from the broker's /metrics, and
# FAILED=1 unless the broker is alive and issued exactly one token (the warm-up's) during the
# whole benchmark.
check_issued_once() {
    local url="$1" pid="$2"
    echo "==> issuances during the benchmark (GET $url/metrics)"
    lcurl "$url/metrics" >"$WORK/metrics.txt"
    grep '^tokenbroker_issuances_total' "$WORK/metrics.txt" || true
    ISSUANCES="$(awk '/^tokenbroker_issuances_total/ { n += $NF; seen = 1 } END { if (seen) print n; else print "missing" }' \
        "$WORK/metrics.txt")"
    if [[ "$ISSUANCES" != 1 ]]; then
        echo "    FAIL: tokenbroker_issuances_total = $ISSUANCES, expected exactly 1" >&2
        FAILED=1
    fi
    kill -0 "$pid" 2>/dev/null || { echo "    FAIL: the broker died" >&2; FAILED=1; }
}
