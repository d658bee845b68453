#!/usr/bin/env bash
# Benchmark of the broker's cached-token path: GET /v1/tokens/{provider}.
#
# Run from the repository root:   bash bench/token_api.sh
#
# What it does:
#   1. installs wrk (and curl) with apt-get if they are missing (needs root; Debian/Ubuntu);
#   2. builds the release binaries (tokenbroker, tokenbroker-emulator);
#   3. starts the Control Room emulator and the broker on free 127.0.0.1 ports, in a temp dir;
#   4. waits for /readyz, warms up with one token request (the only issuance of the run);
#   5. runs wrk against GET /v1/tokens/controlroom, first with the default (JSON) answer,
#      then with `Accept: text/plain` (the bare token);
#   6. after each run reads the broker's peak RSS (VmHWM) from /proc, and at the end checks
#      through /metrics that the broker issued exactly one token during the whole benchmark.
#
# Knobs (environment variables):
#   DURATION     seconds per wrk run                     (default 20)
#   CONNECTIONS  wrk connections                         (default 64)
#   THREADS      wrk threads                             (default 2)
#   SKIP_BUILD   1 = use the existing target/release binaries as they are (default 0)
#   CARGO_TARGET_DIR  honoured as by cargo (binaries are taken from $CARGO_TARGET_DIR/release)
#
# Exit status: 0 when every run had only 2xx answers, no socket errors and exactly one
# issuance; 1 otherwise. All benchmark traffic stays on 127.0.0.1 (curl ignores proxies).
set -euo pipefail

DURATION="${DURATION:-20}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
SKIP_BUILD="${SKIP_BUILD:-0}"
PROVIDER=controlroom

SCRIPT=token_api.sh
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 && "$DURATION" -le 600 ]] \
    || die "DURATION must be whole seconds between 1 and 600 (got '$DURATION')"
[[ "$CONNECTIONS" =~ ^[0-9]+$ && "$CONNECTIONS" -ge 1 ]] || die "CONNECTIONS must be a positive integer"
[[ "$THREADS" =~ ^[0-9]+$ && "$THREADS" -ge 1 ]] || die "THREADS must be a positive integer"
[[ "$THREADS" -le "$CONNECTIONS" ]] || die "THREADS ($THREADS) must not exceed CONNECTIONS ($CONNECTIONS)"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ -f Cargo.toml && -d crates/tokenbroker ]] || die "run this from the tokenbroker repository"

# --- 1. tools -------------------------------------------------------------------------
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
install_missing "${missing[@]}"

# --- 2. build -------------------------------------------------------------------------
build_binaries "$ROOT"

# --- 3. processes, cleaned up on any exit ---------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tokenbroker-bench.XXXXXX")"
EMU_PID=""
cleanup() {
    local status=$?
    for pid in "${BROKER_PIDS[@]}" "$EMU_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    if ((status != 0)); then
        for log in broker.log emulator.log; do
            [[ -s "$WORK/$log" ]] && { echo "--- last lines of $log ---" >&2; tail -n 20 "$WORK/$log" >&2; }
        done
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_emulator

new_keys

echo "==> starting the broker"
start_broker broker "path = \"$WORK/tokenbroker.db\""
BROKER="$STARTED_URL"
TB_PID="$STARTED_PID"

URL="$BROKER/v1/tokens/$PROVIDER"

# --- 4. warm-up: the one issuance ------------------------------------------------------
echo "==> warm-up"
code="$(lcurl -o "$WORK/warm.json" -w '%{http_code}' -H "Authorization: Bearer $KEY" "$URL")"
[[ "$code" == 200 ]] || die "warm-up answered $code: $(cat "$WORK/warm.json")"
grep -q '"access_token"' "$WORK/warm.json" || die "warm-up answer has no access_token"
code="$(lcurl -o "$WORK/warm.txt" -w '%{http_code}' -H "Authorization: Bearer $KEY" \
    -H 'Accept: text/plain' "$URL")"
[[ "$code" == 200 ]] || die "text/plain warm-up answered $code"
grep -qF "\"access_token\":\"$(cat "$WORK/warm.txt")\"" "$WORK/warm.json" \
    || die "the text/plain answer is not the cached token of the JSON answer"
echo "    JSON answer: $(wc -c <"$WORK/warm.json") bytes; text/plain answer: $(wc -c <"$WORK/warm.txt") bytes"

# CPU accounting, to tell whether something else competed for the CPUs during a run:
# seconds of user+system time of the whole machine, of the broker, and of this shell's
# finished children (wrk, through `timeout`). Interrupt time (loopback networking mostly
# runs in softirq, charged to no process) and steal time (the hypervisor) are shown apart.
TICKS="$(getconf CLK_TCK 2>/dev/null || echo 100)"
machine_busy() { awk -v hz="$TICKS" '$1 == "cpu" { print ($2 + $3 + $4) / hz; exit }' /proc/stat; }
machine_irq() { awk -v hz="$TICKS" '$1 == "cpu" { print ($7 + $8) / hz; exit }' /proc/stat; }
machine_steal() { awk -v hz="$TICKS" '$1 == "cpu" { print $9 / hz; exit }' /proc/stat; }
broker_cpu() { sed 's/^.*) //' "/proc/$TB_PID/stat" | awk -v hz="$TICKS" '{ print ($12 + $13) / hz }'; }
children_cpu() {   # the builtin `times` in this shell (not a subshell), second line
    times >"$WORK/times.txt"
    sed -n 2p "$WORK/times.txt" | awk '{
        n = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] }
        print n }'
}

kib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
proc_kb() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$TB_PID/status"; }

# --- 5. load ---------------------------------------------------------------------------
FAILED=0
SUMMARY=()
WRK_BOUND=$((DURATION + 60))
run_wrk() {   # name, extra wrk args...
    local name="$1"; shift
    local out="$WORK/wrk-$name.txt"
    local -a cmd=(wrk "-t$THREADS" "-c$CONNECTIONS" "-d${DURATION}s" --latency --timeout 5s
        -H "Authorization: Bearer $KEY" "$@" "$URL")
    # The command as one would type it, the throwaway key shown as $TOKENBROKER_KEY.
    local shown="" arg
    for arg in "${cmd[@]}"; do
        arg="${arg//$KEY/\$TOKENBROKER_KEY}"
        [[ "$arg" =~ ^[A-Za-z0-9_./:%=-]+$ ]] || arg="\"$arg\""
        shown+="${shown:+ }$arg"
    done

    kill -0 "$TB_PID" 2>/dev/null || die "the broker is gone"
    local rss_before; rss_before="$(proc_kb VmRSS)"
    echo 5 >"/proc/$TB_PID/clear_refs" 2>/dev/null \
        || echo "    (cannot reset VmHWM; peak RSS below is since broker start)" >&2
    echo "==> [$name] $shown"
    local m0 i0 s0 b0 c0 m1 i1 s1 b1 c1
    m0="$(machine_busy)"; i0="$(machine_irq)"; s0="$(machine_steal)"; b0="$(broker_cpu)"
    children_cpu >"$WORK/c0"; c0="$(cat "$WORK/c0")"
    timeout "$WRK_BOUND" "${cmd[@]}" | tee "$out"
    m1="$(machine_busy)"; i1="$(machine_irq)"; s1="$(machine_steal)"; b1="$(broker_cpu)"
    children_cpu >"$WORK/c1"; c1="$(cat "$WORK/c1")"
    local cpu_line
    cpu_line="$(awk -v m0="$m0" -v m1="$m1" -v i0="$i0" -v i1="$i1" -v s0="$s0" -v s1="$s1" \
        -v b0="$b0" -v b1="$b1" -v c0="$c0" -v c1="$c1" -v d="$DURATION" -v n="$(nproc)" \
        'BEGIN { br = b1 - b0; w = c1 - c0; o = (m1 - m0) - br - w; if (o < 0) o = 0
                 printf "CPU s: broker %.1f, wrk %.1f, irq %.1f, steal %.1f, other processes %.1f (%.0f%% of %d CPUs x %d s)",
                        br, w, i1 - i0, s1 - s0, o, 100 * o / (d * n), n, d }')"
    local hwm rss_after; hwm="$(proc_kb VmHWM)"; rss_after="$(proc_kb VmRSS)"

    local rps p50 p99 total non2xx sockerr
    rps="$(awk '/^Requests\/sec:/ { print $2 }' "$out")"
    p50="$(awk '$1 == "50%" { print $2 }' "$out")"
    p99="$(awk '$1 == "99%" { print $2 }' "$out")"
    total="$(awk '/requests in/ { print $1 }' "$out")"
    non2xx="$(awk -F': *' '/Non-2xx or 3xx responses/ { print $2 }' "$out")"; non2xx="${non2xx:-0}"
    sockerr="$(sed -n 's/^ *Socket errors: *//p' "$out")"
    [[ -n "$rps" && -n "$p50" && -n "$p99" ]] || { echo "    could not parse wrk's output" >&2; FAILED=1; }
    if [[ "$non2xx" != 0 ]]; then echo "    FAIL: $non2xx non-2xx answers" >&2; FAILED=1; fi
    if [[ -n "$sockerr" ]]; then echo "    FAIL: socket errors: $sockerr" >&2; FAILED=1; fi

    SUMMARY+=("$(printf '%-11s %12s %10s %10s %12s %14s %16s %9s  %s' "$name" "$rps" "$p50" "$p99" \
        "$(kib "$hwm")" "$(kib "$rss_before")" "$(kib "$rss_after")" "$non2xx" "${sockerr:-none}")")
    SUMMARY_TOTAL+=("$name: $total requests; $cpu_line")
    COMMANDS+=("$shown")
}
SUMMARY_TOTAL=()
COMMANDS=()
run_wrk json
run_wrk text_plain -H 'Accept: text/plain'

# --- 6. exactly one issuance -------------------------------------------------------------
check_issued_once "$BROKER" "$TB_PID"

# --- summary -----------------------------------------------------------------------------
echo
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ "$COMMIT" != unknown ]] \
    && ! git --no-optional-locks diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null; then
    COMMIT+=" + uncommitted changes"
fi
echo "==> summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, commit $COMMIT)"
printf '%-11s %12s %10s %10s %12s %14s %16s %9s  %s\n' variant "requests/s" p50 p99 \
    "peak RSS MiB" "RSS before MiB" "RSS after MiB" "non-2xx" "socket errors"
printf '%s\n' "${SUMMARY[@]}"
printf '%s\n' "${SUMMARY_TOTAL[@]}"
echo "issuances (tokenbroker_issuances_total, summed): $ISSUANCES"
echo "commands (key generated per run):"
printf '  %s\n' "${COMMANDS[@]}"
echo "note: wrk and the broker share this machine's CPUs; the figures are a lower bound."
echo "      If 'other processes' or 'steal' is more than a few percent, something else competed"
echo "      for the CPUs: rerun on a quiet machine (tail latency suffers first)."
if ((FAILED)); then
    echo "RESULT: FAIL" >&2
    exit 1
fi
echo "RESULT: OK"
