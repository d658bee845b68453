#!/usr/bin/env bash
# Benchmark for issue 7: one broker on SQLite vs three brokers sharing PostgreSQL.
#
# Run from the repository root:   bash bench/cluster.sh
#
# What it does, all on 127.0.0.1 (free ports, a temp dir, everything stopped on exit):
#   1. installs wrk, curl and psql (postgresql-client) with apt-get if they are missing
#      (needs root; Debian/Ubuntu), builds the release binaries;
#   2. starts the Control Room emulator (token lifetime 1h, login latency 0 ms);
#   3. scenario A: one broker with [store] path = "<tmp>/tb.db" (SQLite);
#      scenario B: three brokers with [store] url = postgres://postgres@127.0.0.1:5432/test and
#      a schema of their own, tb_bench_<random>, dropped at the end (skipped, saying so, when
#      that PostgreSQL is unreachable);
#   4. issuance latency: ISSUES forced issuances in a row (after WARMUP unrecorded ones),
#      each one a GET /v1/tokens/controlroom (untimed, repeated until that broker serves the
#      current generation G, the previous answer's) then the timed
#      POST /v1/tokens/controlroom/invalidate {"generation": G}, whose answer is the new token:
#      lease, login, store commits, audit. Every answer must carry a newer generation (a real
#      reissue). In B the invalidations go round-robin over the three brokers, then
#      round-robin without waiting for the broker to serve G first (as a consumer that got G
#      from one broker and reports it to another: an answer that is not a newer generation is
#      counted as a superseded answer), then all to one of them. With round-robin the broker
#      asked did not make the previous issuance: the client also reports how long it took to
#      serve the new generation ("pickup"). Timed by a python3 client on kept-alive
#      connections (http.client, time.perf_counter), so the client adds little;
#   5. cached-token requests/s: wrk -t2 -c64 -d15s --latency against GET /v1/tokens/controlroom
#      on the single broker (A), on one of the three brokers (B), and spread over the three
#      (three wrk -t1 -c22 at once, summed);
#   6. checks through /metrics that the brokers' issuances add up to the last generation
#      (every generation issued exactly once, none during the wrk runs), prints a summary and writes bench/cluster-results.md
#      (APPEND=1: add this run to the existing file instead of replacing it).
#
# Knobs (environment variables):
#   ISSUES       recorded forced issuances per series              (default 200)
#   WARMUP       unrecorded forced issuances before each series   (default 10)
#   DURATION     seconds per wrk run                               (default 15)
#   PG_URL       PostgreSQL for scenario B (default postgres://postgres@127.0.0.1:5432/test)
#   SKIP_BUILD   1 = use the existing target/release binaries as they are (default 0)
#   RESULTS      where to write the results (default bench/cluster-results.md; "" = nowhere)
#   APPEND       1 = append this run to RESULTS (default 0: replace it)
#   CARGO_TARGET_DIR  honoured as by cargo (binaries are taken from $CARGO_TARGET_DIR/release)
#
# Exit status: 0 when every request answered 2xx without socket errors, every waited-for
# invalidation was a real reissue and the issuance counts match; 1 otherwise. Superseded
# answers in the "no wait" series are reported (Observations), not failed.
set -euo pipefail

ISSUES="${ISSUES:-200}"
WARMUP="${WARMUP:-10}"
DURATION="${DURATION:-15}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
SKIP_BUILD="${SKIP_BUILD:-0}"
RESULTS="${RESULTS-bench/cluster-results.md}"
APPEND="${APPEND:-0}"
PROVIDER=controlroom

SCRIPT=cluster.sh
LCURL_MAX_TIME=10
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ "$ISSUES" =~ ^[0-9]+$ && "$ISSUES" -ge 10 ]] || die "ISSUES must be an integer >= 10"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer"
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 && "$DURATION" -le 600 ]] \
    || die "DURATION must be whole seconds between 1 and 600 (got '$DURATION')"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ -f Cargo.toml && -d crates/tokenbroker ]] || die "run this from the tokenbroker repository"

# --- 1. tools and build ------------------------------------------------------------------
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
install_missing "${missing[@]}"
build_binaries "$ROOT"
# The commit the binaries were built from (taken now: HEAD may move during the run).
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ "$COMMIT" != unknown ]] \
    && ! git --no-optional-locks diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null; then
    COMMIT+=" + uncommitted changes under crates/ or Cargo.*"
fi
[[ "$SKIP_BUILD" == 1 ]] && COMMIT+=" (SKIP_BUILD=1: binaries as found, maybe older)"

# --- 2. processes and the schema, cleaned up on any exit ------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tokenbroker-cluster-bench.XXXXXX")"
EMU_PID=""
SCHEMA=""           # set once scenario B may have created it
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${BROKER_PIDS[@]}" "$EMU_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    if [[ -n "$SCHEMA" ]]; then
        PGCONNECT_TIMEOUT=5 timeout 30 psql -X -q "$PG_URL" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" \
            >/dev/null 2>&1 || echo "cluster.sh: could not drop schema $SCHEMA: drop it by hand" >&2
    fi
    if ((status != 0)); then
        local log
        for log in "${BROKER_LOGS[@]}" "$WORK/emulator.log"; do
            [[ -s "$log" ]] && { echo "--- last lines of $(basename "$log") ---" >&2; tail -n 20 "$log" >&2; }
        done
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_emulator

new_keys


stop_broker() {   # PID
    local pid="$1"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Sum of tokenbroker_issuances_total over the given brokers.
issuances() {
    local url n total=0
    for url in "$@"; do
        n="$(lcurl "$url/metrics" | awk '/^tokenbroker_issuances_total/ { n += $NF; seen = 1 }
                                          END { if (seen) print n; else print "missing" }')"
        [[ "$n" =~ ^[0-9]+$ ]] || { echo missing; return; }
        total=$((total + n))
    done
    echo "$total"
}

# --- the issuance-latency client ---------------------------------------------------------------
cat >"$WORK/issue.py" <<'PY'
"""Forced issuances in a row, round-robin over the given brokers. Each step GETs the token
(untimed) on the next broker, then times POST .../invalidate {"generation": G} there, G being
the current generation (the previous answer's, made by another broker when there are several).
Mode "wait": the GET is repeated until that broker serves G (it learns of G from the store),
and the answer must carry a newer generation (a real reissue), else the run fails.
Mode "nowait": no waiting, as a consumer that got G from one broker and reports it to another
would do; an answer with a generation <= G (a token already superseded) is counted and left
out of the latencies. Prints one JSON line."""
import http.client, json, sys, time

brokers, key, provider = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
warmup, n, known, mode = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
auth = {"Authorization": "Bearer " + key}
conns = [http.client.HTTPConnection(b, timeout=30) for b in brokers]

def call(i, method, path, body=None):
    headers = dict(auth)
    if body is not None:
        body = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conns[i].request(method, path, body=body, headers=headers)
    r = conns[i].getresponse()
    data = r.read()
    if r.status != 200:
        sys.exit(f"{method} {path} on {brokers[i]} answered {r.status}: {data[:300]!r}")
    return json.loads(data)

def pct(s, p):  # nearest rank
    return s[min(len(s) - 1, max(0, -(-p * len(s) // 100) - 1))] if s else None

path = f"/v1/tokens/{provider}"
# `known`: the newest generation issued so far in this scenario (a broker may lag behind).
current = max([known] + [call(i, "GET", path)["generation"] for i in range(len(brokers))])
first = current
times, lags, stale_gets, superseded = [], [], 0, 0
answered = prev_answered = time.perf_counter()
for k in range(warmup + n):
    i = k % len(brokers)
    stale = call(i, "GET", path)["generation"] < current   # not picked up the newest yet
    if mode == "wait":
        while call(i, "GET", path)["generation"] < current:
            if time.perf_counter() - answered > 10:
                sys.exit(f"{brokers[i]} still serves a generation older than {current} after 10 s")
            time.sleep(0.0005)
    seen = time.perf_counter()
    t0 = time.perf_counter()
    answer = call(i, "POST", path + "/invalidate", {"generation": current})
    answered = time.perf_counter()
    if answer["generation"] <= current:
        if mode == "wait":
            sys.exit(f"invalidate of generation {current} on {brokers[i]} answered generation "
                     f"{answer['generation']}: no reissue")
        superseded += k >= warmup
        continue
    current = answer["generation"]
    if k >= warmup:
        times.append((answered - t0) * 1000)
        stale_gets += stale
        if mode == "wait" and len(brokers) > 1 and k > 0:
            lags.append((seen - prev_answered) * 1000)
    prev_answered = answered

s, l = sorted(times), sorted(lags)
print(json.dumps({"n": len(s), "p50": pct(s, 50), "p90": pct(s, 90), "p99": pct(s, 99),
                  "mean": sum(s) / len(s) if s else None, "max": s[-1] if s else None,
                  "stale_gets": stale_gets, "superseded_answers": superseded,
                  "lag_p50": pct(l, 50), "lag_p99": pct(l, 99), "lag_max": l[-1] if l else None,
                  "first_generation": first, "last_generation": current}))
PY

NOTES=()            # observations worth a line in the results
LAST_GEN=0          # newest generation of the scenario, so that a series starts from it
ISSUE_ROWS=()       # markdown rows
ISSUE_CMDS=()
FAILED=0
run_issues() {   # label, mode (wait|nowait), broker URLs...
    local label="$1" mode="$2"; shift 2
    local hosts="" url
    for url in "$@"; do hosts+="${hosts:+,}${url#http://}"; done
    echo "==> [$label] $WARMUP + $ISSUES forced issuances over $# broker(s), $mode"
    local out start_gen="$LAST_GEN"
    out="$(timeout 300 python3 "$WORK/issue.py" "$hosts" "$KEY" "$PROVIDER" "$WARMUP" "$ISSUES" \
        "$LAST_GEN" "$mode")" || die "[$label] the issuance client failed"
    echo "    $out"
    LAST_GEN="$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["last_generation"])' "$out")"
    ISSUE_ROWS+=("$(python3 -c 'import json, sys
r = json.loads(sys.argv[2])
f = lambda v: "n/a" if v is None else "%.2f" % v
lag = "n/a" if r["lag_p50"] is None else "%.1f / %.1f / %.1f" % (r["lag_p50"], r["lag_p99"], r["lag_max"])
print("| %s | %d | %s | %s | %s | %s | %s | %d | %d | %s |" % (sys.argv[1], r["n"], f(r["p50"]),
      f(r["p90"]), f(r["p99"]), f(r["mean"]), f(r["max"]), r["stale_gets"], r["superseded_answers"], lag))' \
        "$label" "$out")")
    local note
    note="$(python3 -c 'import json, sys
r, label, n = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
if r["lag_p50"] is not None and r["lag_p50"] >= 20:
    print("- \"%s\": after a broker stored a new token, the next broker went on serving the superseded one on GET for %.0f ms (median; max %.0f ms)." % (label, r["lag_p50"], r["lag_max"]))
if r["superseded_answers"]:
    print("- **\"%s\": %d of %d invalidations answered with a generation no newer than the one reported, i.e. a token already superseded.**" % (label, r["superseded_answers"], n))' \
        "$out" "$label" "$ISSUES")"
    [[ -n "$note" ]] && NOTES+=("$note")
    ISSUE_CMDS+=("python3 issue.py $hosts \$TOKENBROKER_KEY $PROVIDER $WARMUP $ISSUES $start_gen $mode   # $label")
    return 0
}

WRK_ROWS=()
WRK_CMDS=()
# CPU accounting, to show who used the 2 CPUs during a wrk run: seconds of user+system time
# of the whole machine, of the scenario's brokers (CPU_PIDS), of the postgres processes, and
# of this shell's finished children (the wrk processes, through `timeout`).
TICKS="$(getconf CLK_TCK 2>/dev/null || echo 100)"
CPU_PIDS=()
machine_busy() { awk -v hz="$TICKS" '$1 == "cpu" { print ($2 + $3 + $4) / hz; exit }' /proc/stat; }
machine_irq() { awk -v hz="$TICKS" '$1 == "cpu" { print ($7 + $8) / hz; exit }' /proc/stat; }
pids_cpu() {   # PID...: their user+system seconds (pids that are gone count 0)
    local pid total=0 t
    for pid in "$@"; do
        t="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }')" || t=0
        total=$((total + ${t:-0}))
    done
    awk -v t="$total" -v hz="$TICKS" 'BEGIN { print t / hz }'
}
postgres_cpu() {   # the postgres processes alive now (postmaster, backends, writers)
    local -a pg=()
    mapfile -t pg < <(pgrep -x postgres 2>/dev/null || true)
    if ((${#pg[@]})); then pids_cpu "${pg[@]}"; else echo 0; fi
}
children_cpu() {   # the builtin `times` in this shell (not a subshell), second line
    times >"$WORK/times.txt"
    sed -n 2p "$WORK/times.txt" | awk '{
        n = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] }
        print n }' >"$WORK/children.txt"
}
WRK_BOUND=$((DURATION + 60))
# run_wrk LABEL THREADS CONNECTIONS URL...: one wrk per URL, all at once, figures summed
# (requests/s, non-2xx) or shown per process (latency percentiles).
run_wrk() {
    local label="$1" threads="$2" conns="$3"; shift 3
    local -a pids=() outs=()
    local j=0 url shown m0 b0 g0 c0 i0 m1 b1 g1 c1 i1
    i0="$(machine_irq)"; m0="$(machine_busy)"; b0="$(pids_cpu "${CPU_PIDS[@]}")"; g0="$(postgres_cpu)"
    children_cpu; c0="$(cat "$WORK/children.txt")"
    echo "==> [$label] $# x wrk -t$threads -c$conns -d${DURATION}s --latency"
    for url in "$@"; do
        j=$((j + 1))
        outs+=("$WORK/wrk-${label//[^a-zA-Z0-9]/_}-$j.txt")
        timeout "$WRK_BOUND" wrk "-t$threads" "-c$conns" "-d${DURATION}s" --latency --timeout 5s \
            -H "Authorization: Bearer $KEY" "$url/v1/tokens/$PROVIDER" >"${outs[-1]}" 2>&1 &
        pids+=($!)
        shown="wrk -t$threads -c$conns -d${DURATION}s --latency --timeout 5s -H \"Authorization: Bearer \$TOKENBROKER_KEY\" $url/v1/tokens/$PROVIDER"
        WRK_CMDS+=("$shown   # $label")
    done
    local pid ok=1
    for pid in "${pids[@]}"; do wait "$pid" || ok=0; done
    ((ok)) || { cat "${outs[@]}" >&2; die "[$label] wrk failed"; }
    i1="$(machine_irq)"; m1="$(machine_busy)"; b1="$(pids_cpu "${CPU_PIDS[@]}")"; g1="$(postgres_cpu)"
    children_cpu; c1="$(cat "$WORK/children.txt")"
    local cpu
    cpu="$(awk -v m0="$m0" -v m1="$m1" -v b0="$b0" -v b1="$b1" -v g0="$g0" -v g1="$g1" \
        -v c0="$c0" -v c1="$c1" -v i0="$i0" -v i1="$i1" 'BEGIN { b = b1 - b0; g = g1 - g0; w = c1 - c0
            o = (m1 - m0) - b - g - w; if (o < 0) o = 0
            printf "%.1f / %.1f / %.1f / %.1f / %.1f", b, g, w, i1 - i0, o }')"
    local f rps=0 p50s="" p99s="" non2xx=0 sockerr="" r n e total=0 t
    for f in "${outs[@]}"; do
        sed 's/^/    /' "$f"
        r="$(awk '/^Requests\/sec:/ { print $2 }' "$f")"
        t="$(awk '/requests in/ { print $1 }' "$f")"
        [[ -n "$r" && -n "$t" ]] || { echo "    could not parse wrk's output" >&2; FAILED=1; r=0; t=0; }
        rps="$(awk -v a="$rps" -v b="$r" 'BEGIN { printf "%.0f", a + b }')"
        total=$((total + t))
        p50s+="${p50s:+ / }$(awk '$1 == "50%" { print $2 }' "$f")"
        p99s+="${p99s:+ / }$(awk '$1 == "99%" { print $2 }' "$f")"
        n="$(awk -F': *' '/Non-2xx or 3xx responses/ { print $2 }' "$f")"
        non2xx=$((non2xx + ${n:-0}))
        e="$(sed -n 's/^ *Socket errors: *//p' "$f")"
        [[ -n "$e" ]] && sockerr+="${sockerr:+; }$e"
    done
    if ((non2xx != 0)); then echo "    FAIL: $non2xx non-2xx answers" >&2; FAILED=1; fi
    if [[ -n "$sockerr" ]]; then echo "    FAIL: socket errors: $sockerr" >&2; FAILED=1; fi
    echo "    CPU s (brokers / postgres / wrk / irq+softirq / other): $cpu of $(nproc) x $DURATION s"
    local other="${cpu##* / }"
    if awk -v o="$other" -v cap="$(($(nproc) * DURATION))" 'BEGIN { exit !(o > 0.1 * cap) }'; then
        echo "    WARNING: other processes used $other CPU s during this run: its figures are disturbed" >&2
        NOTES+=("- **\"$label\": other processes used $other of $(($(nproc) * DURATION)) CPU s during the wrk run: its figures are disturbed by something else on the machine.**")
    fi
    WRK_ROWS+=("| $label | $# x wrk -t$threads -c$conns | $rps | $total | $p50s | $p99s | $non2xx | ${sockerr:-none} | $cpu |")
}

check_issuances() {   # label expected URLs...
    local label="$1" expected="$2"; shift 2
    local got; got="$(issuances "$@")"
    if [[ "$got" == "$expected" ]]; then
        echo "    [$label] issuances (tokenbroker_issuances_total, summed): $got, as expected"
    else
        echo "    FAIL: [$label] tokenbroker_issuances_total summed = $got, expected $expected" >&2
        FAILED=1
    fi
}

LOAD_AT_START="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- scenario A: one broker on SQLite -------------------------------------------------------
echo "==> scenario A: one broker, SQLite"
start_broker a "path = \"$WORK/tb.db\""
A_URL="$STARTED_URL"
A_PID="$STARTED_PID"
LAST_GEN=0
echo "    broker A on $A_URL"
run_issues "A, SQLite" wait "$A_URL"
check_issuances "A after issuances" "$LAST_GEN" "$A_URL"
CPU_PIDS=("$A_PID")
run_wrk "A, SQLite, 1 broker" 2 64 "$A_URL"
check_issuances "A after wrk" "$LAST_GEN" "$A_URL"
kill -0 "$A_PID" 2>/dev/null || { echo "    FAIL: broker A died" >&2; FAILED=1; }
stop_broker "$A_PID"

# --- scenario B: three brokers on PostgreSQL ------------------------------------------------
B_SKIPPED=""
PG_SETTINGS=""
if ! PGCONNECT_TIMEOUT=5 timeout 20 psql -X -q -At "$PG_URL" -c 'SELECT 1' >"$WORK/pg.txt" 2>&1; then
    B_SKIPPED="PostgreSQL at $PG_URL is unreachable ($(tr '\n' ' ' <"$WORK/pg.txt")): scenario B skipped"
    echo "==> $B_SKIPPED" >&2
else
    PG_SETTINGS="$(PGCONNECT_TIMEOUT=5 timeout 20 psql -X -q -At -F ' ' "$PG_URL" -c \
        "SELECT split_part(version(), ' ', 2), current_setting('synchronous_commit'),
                current_setting('fsync'), current_setting('shared_buffers'),
                current_setting('max_connections')" \
        | awk '{ printf "PostgreSQL %s, synchronous_commit = %s, fsync = %s, shared_buffers = %s, max_connections = %s", $1, $2, $3, $4, $5 }')"
    SCHEMA="tb_bench_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
    echo "==> scenario B: three brokers, PostgreSQL schema $SCHEMA ($PG_SETTINGS)"
    B_URLS=()
    B_PIDS=()
    LAST_GEN=0
    for b in b1 b2 b3; do
        start_broker "$b" "url = \"$PG_URL\"
schema = \"$SCHEMA\""
        B_URLS+=("$STARTED_URL")
        B_PIDS+=("$STARTED_PID")
        echo "    broker $b on $STARTED_URL"
    done
    run_issues "B, PostgreSQL, round-robin over 3" wait "${B_URLS[@]}"
    run_issues "B, PostgreSQL, round-robin over 3, no wait" nowait "${B_URLS[@]}"
    run_issues "B, PostgreSQL, all on 1 of 3" wait "${B_URLS[0]}"
    check_issuances "B after issuances" "$LAST_GEN" "${B_URLS[@]}"
    CPU_PIDS=("${B_PIDS[@]}")
    run_wrk "B, PostgreSQL, 1 of 3 brokers" 2 64 "${B_URLS[0]}"
    run_wrk "B, PostgreSQL, all 3 brokers" 1 22 "${B_URLS[@]}"
    check_issuances "B after wrk" "$LAST_GEN" "${B_URLS[@]}"
    for pid in "${B_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "    FAIL: a B broker died" >&2; FAILED=1; }
    done
fi

# --- summary and results file ----------------------------------------------------------------
DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
CPU_MODEL="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
MEM="$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
MACHINE="$(nproc) CPUs ($CPU_MODEL), $MEM RAM, Linux $(uname -r)"

REPORT="$WORK/report.md"
{
    echo "### Run of $DATE"
    echo
    echo "- commit: $COMMIT"
    echo "- machine: $MACHINE; load average at the start: $LOAD_AT_START"
    echo "- PostgreSQL: ${PG_SETTINGS:-not used}"
    [[ -n "$B_SKIPPED" ]] && echo "- **$B_SKIPPED**"
    echo "- emulator: \`tokenbroker-emulator --listen 127.0.0.1:0 --lifetime 1h --login-latency 0ms --user api-bot:demo-key\`"
    echo
    echo "Issuance latency: $ISSUES forced issuances in a row per series (after $WARMUP unrecorded),"
    echo "time of \`POST /v1/tokens/$PROVIDER/invalidate\` until the new token is back, in ms."
    echo "Before each invalidation the client GETs the token (untimed) on the broker it is about to"
    echo "ask; it reports the current generation G, the one the previous answer carried. Except in"
    echo "\"no wait\", the client repeats that GET until the broker serves G. \"stale GETs\": steps"
    echo "where that broker's first GET still returned the generation another broker had just"
    echo "superseded; \"superseded answers\": invalidations answered with a generation <= G (no"
    echo "reissue, left out of the latencies); \"pickup\": ms from the previous answer (another"
    echo "broker) until this broker served G, p50 / p99 / max (the GET round trip included; polled"
    echo "every 0.5 ms)."
    echo
    echo "| series | n | p50 | p90 | p99 | mean | max | stale GETs | superseded answers | pickup ms |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${ISSUE_ROWS[@]}"
    echo
    echo "Cached-token requests/s: \`GET /v1/tokens/$PROVIDER\` (JSON answer), ${DURATION} s per run;"
    echo "with several wrk processes the requests/s are summed and the latencies shown per process."
    echo "CPU s: CPU seconds used during the run by the scenario's brokers / the postgres processes /"
    echo "wrk / interrupt time (irq + softirq: loopback TCP is mostly processed in softirq, charged to"
    echo "no process) / everything else (other processes, this script),"
    echo "out of $(nproc) CPUs x ${DURATION} s = $(($(nproc) * DURATION)) s."
    echo
    echo "| series | load | requests/s | requests | p50 | p99 | non-2xx | socket errors | CPU s |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"
    printf '%s\n' "${WRK_ROWS[@]}"
    echo
    echo "Commands (\`issue.py\` is the python3 client embedded in \`bench/cluster.sh\`; the broker ports"
    echo "were free ports of that run; the client key was generated for the run):"
    echo
    echo '```'
    echo "bash bench/cluster.sh   # ISSUES=$ISSUES WARMUP=$WARMUP DURATION=$DURATION"
    printf '%s\n' "${ISSUE_CMDS[@]}" "${WRK_CMDS[@]}"
    echo '```'
    echo
    if ((${#NOTES[@]})); then echo "Observations:"; echo; printf '%s\n' "${NOTES[@]}"; echo; fi
    if ((FAILED)); then echo "Result: **FAIL** (see the script's output)"; else
        echo "Result: OK (no non-2xx, no socket errors; tokenbroker_issuances_total = the last generation)"; fi
} >"$REPORT"

echo
echo "==> summary"
cat "$REPORT"

if [[ -n "$RESULTS" ]]; then
    if [[ "$APPEND" == 1 && -s "$RESULTS" ]]; then
        { echo; cat "$REPORT"; } >>"$RESULTS"
    else
        {
            echo "# Cluster benchmark: one broker on SQLite vs three on PostgreSQL (issue 7)"
            echo
            echo "Written by \`bash bench/cluster.sh\` (\`APPEND=1\` adds a run). Everything runs on one"
            echo "machine, on 127.0.0.1: the emulator, the brokers, wrk or the python3 client, and the"
            echo "machine's PostgreSQL as it is configured (its settings that matter are listed per run;"
            echo "with \`synchronous_commit = on\` every store commit waits for a WAL flush). wrk, the"
            echo "brokers and PostgreSQL compete for the same CPUs ($(nproc) here): the requests/s are a"
            echo "lower bound, and three brokers on one machine say nothing about how three brokers on"
            echo "three machines would scale. The emulator's login takes 0 ms,"
            echo "so the issuance latency is the broker's own path: the lease, the ledger and token"
            echo "commits in the store, the audit record, and the login round trip on loopback."
            echo
            cat "$REPORT"
        } >"$RESULTS"
    fi
    echo "==> results written to $RESULTS"
fi

if ((FAILED)); then
    echo "RESULT: FAIL" >&2
    exit 1
fi
echo "RESULT: OK"
