# What the bench/ scripts share: sourced by them, not run. A script sets SCRIPT (its name,
# for messages) and, before starting processes, WORK (its temp dir); it keeps its own
# cleanup, since what it starts differs.

die() { echo "${SCRIPT:-bench}: $*" >&2; exit 1; }

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
