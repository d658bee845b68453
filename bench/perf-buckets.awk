# Buckets the samples of `perf script -F ip,sym,dso` (call graphs, leaf first) by what
# the time was spent on, for bench/proxy.sh's PROFILE=1 mode.
#
#   perf script -i perf.data -F comm,ip,sym,dso | awk -v hz=499 -v requests=N -f perf-buckets.awk
#
# (-v split_alloc=1 also splits the allocator's time by the component that allocated.)
#
# Kernel samples are filed under the system call they happened in (a writev that wakes the
# reading process is counted apart: on loopback the writer does the reader's TCP receive
# work and wake-up). User-space samples are filed under the innermost frame that belongs to
# a component we can name (walking from the leaf towards main), so that, say, memcpy called
# by the URL parser counts as URL parsing; generic building blocks (http's HeaderMap, bytes,
# futures-util) count for the component that called them. Only the allocator is filed by
# the leaf itself.
# Prints: percent of samples, microseconds per request (samples / hz / requests), bucket.

function owner(sym,    s) {
    # The function's own path: "<T as Trait>::f" -> "T", "a::b::f<X>" -> "a::b::f";
    # inlined generic frames such as "poll<hyper::...> (inlined)" -> "poll" (no owner).
    s = sym
    sub(/ \(inlined\)$/, "", s)
    sub(/\+0x[0-9a-f]+$/, "", s)
    if (s ~ /^</) { s = substr(s, 2); sub(/ as .*/, "", s); sub(/<.*/, "", s) }
    else sub(/[<( ].*/, "", s)
    sub(/^(&|\*const |\*mut |mut |dyn )+/, "", s)
    return s
}

function user_bucket(o) {
    if (o ~ /^(tracing_subscriber|tracing_core|tracing|tower_http::trace)(::|$)/) return "tracing (request span, subscriber)"
    if (o ~ /^(url|idna|form_urlencoded|percent_encoding)::/) return "URL building and parsing (url, idna)"
    if (o ~ /^tokenbroker::proxy::headers/) return "tokenbroker proxy header copies (proxy::headers)"
    if (o ~ /^tokenbroker::proxy::target/) return "tokenbroker upstream URL (proxy::target)"
    if (o ~ /^(sha2|tokenbroker_core::access)/) return "client key check (SHA-256, access)"
    if (o ~ /^(serde_json|serde)::/) return "JSON serialisation (serde_json)"
    if (o ~ /^humantime::/) return "RFC 3339 formatting (humantime)"
    if (o ~ /^prometheus_client::/) return "metrics (prometheus-client)"
    if (o ~ /^tokenbroker_core::/) return "token slot (tokenbroker-core)"
    if (o ~ /^tokenbroker::/) return "tokenbroker handlers (other)"
    if (o ~ /^hyper::proto::h1::role::Server/) return "hyper HTTP/1 server: parse request, encode response"
    if (o ~ /^hyper::proto::h1::role::Client/) return "hyper HTTP/1 client: encode request, parse response"
    if (o ~ /^hyper_util::client/) return "hyper-util client (pool checkout, connector clone)"
    if (o ~ /^reqwest::/) return "reqwest (request building, Pending, Body)"
    if (o ~ /^(hyper|hyper_util)::/) return "hyper (dispatch, buffers, other)"
    if (o ~ /^(axum|axum_core|tower|matchit)::/) return "axum/tower (routing, extractors, services)"
    if (o ~ /^tokio::/) return "tokio (scheduler, I/O driver, timers, channels)"
    return ""
}

# Generic building blocks: time spent in them is filed under whoever called them.
function generic_bucket(o) {
    if (o ~ /^(http|bytes|httparse|httpdate)::/) return "http/bytes types (header maps, Bytes)"
    if (o ~ /^(futures_util|futures_core)::/) return "futures-util combinators"
    return ""
}

function flush(    i, b, g, o, sysc, wake, kern, leafdso) {
    if (n == 0) return
    total++
    leafdso = dso[1]
    if (leafdso ~ /kernel/) {
        sysc = ""; wake = 0
        for (i = 1; i <= n; i++) {
            if (sym[i] ~ /^(sock_def_readable|ep_poll_callback|try_to_wake_up)/) wake = 1
            if (sym[i] ~ /^do_writev|^__x64_sys_writev|^ksys_write|^__x64_sys_write$|^__sys_sendto|^__sys_sendmsg/) { sysc = "write"; break }
            if (sym[i] ~ /^__sys_recvfrom|^__x64_sys_recvfrom|^ksys_read|^__x64_sys_read$|^__sys_recvmsg|^do_readv/) { sysc = "read"; break }
            if (sym[i] ~ /^do_epoll_wait|^__x64_sys_epoll_wait|^__x64_sys_epoll_pwait/) { sysc = "epoll_wait"; break }
            if (sym[i] ~ /^do_futex|^__x64_sys_futex/) { sysc = "futex"; break }
            if (sym[i] ~ /^exit_to_user_mode|^irqentry_exit_to_user_mode/) { sysc = "resched"; break }
            if (sym[i] ~ /^do_syscall_64/) { sysc = "other"; break }
        }
        if (sysc == "write" && wake) b = "kernel: write/writev, waking the reader (loopback delivers in the writer)"
        else if (sysc == "write") b = "kernel: write/writev, TCP send and loopback receive"
        else if (sysc == "read") b = "kernel: recvfrom/read"
        else if (sysc == "epoll_wait") b = "kernel: epoll_wait (incl. sleeping in and waking from it)"
        else if (sysc == "futex") b = "kernel: futex (parking/unparking runtime threads)"
        else if (sysc == "resched") b = "kernel: rescheduled on the way back to user space (CPU contention)"
        else if (sysc == "other") b = "kernel: other system calls"
        else b = "kernel: no system call (interrupts, scheduling)"
    } else if (sym[1] ~ /^(_int_malloc|_int_free|malloc|free|cfree|realloc|_int_realloc|malloc_consolidate|unlink_chunk|__libc_malloc|__libc_free|__libc_calloc|calloc|tcache_|alloc::alloc::|__rust_alloc|__rust_dealloc|__rdl_|mi_|_mi_|je_|_rjem_)/ \
               || leafdso ~ /lib(mimalloc|jemalloc)/) {
        b = (leafdso ~ /lib(mimalloc|jemalloc)/ || sym[1] ~ /^(mi_|_mi_|je_|_rjem_)/) ? "allocator (preloaded mimalloc/jemalloc)" : "allocator (glibc malloc/free, Rust alloc glue)"
        if (split_alloc) {
            g = ""
            for (i = 2; i <= n; i++) {
                if (dso[i] ~ /kernel|libc\.so|ld-linux|vdso/) continue
                o = owner(sym[i]); g = user_bucket(o)
                if (g != "") break
            }
            b = b ", for: " (g == "" ? "?" : g)
        }
    } else {
        b = ""; g = ""
        for (i = 1; i <= n && b == ""; i++) {
            if (dso[i] ~ /kernel|libc\.so|ld-linux|vdso/) continue
            o = owner(sym[i])
            b = user_bucket(o)
            if (g == "") g = generic_bucket(o)
        }
        if (b == "") b = g
        if (b == "") {
            if (leafdso ~ /nginx/) b = "nginx user space"
            else if (leafdso ~ /libc\.so/) b = "libc (memcpy, other)"
            else if (leafdso ~ /vdso/) b = "vdso (clock_gettime)"
            else b = "other user space"
        }
    }
    count[b]++
    n = 0
}

# A sample starts with a header line (the comm, not indented); frames are indented.
/^[^ \t]/ { flush(); next }
/^[ \t]*$/ { flush(); next }
{
    line = $0
    sub(/^[ \t]+[0-9a-f]+ /, "", line)
    d = line; sub(/.* \(/, "", d); sub(/\)$/, "", d)
    s = line; sub(/ \([^()]*\)$/, "", s)
    if (line ~ /\(inlined\)$/) { d = (n > 0 ? dso[n] : ""); s = line }
    n++; sym[n] = s; dso[n] = d
}
END {
    flush()
    if (total == 0) { print "no samples"; exit }
    for (b in count)
        printf "%6.2f%%  %7.2f us/req  %s\n", 100 * count[b] / total, (requests > 0 ? 1e6 * count[b] / hz / requests : 0), b
}
