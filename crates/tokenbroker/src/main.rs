//! The `tokenbroker` binary: parses the command line and hands over to [`tokenbroker::cli`].

/// mimalloc rather than the system allocator: the request paths allocate small, short-lived
/// buffers on two threads, where glibc's malloc cost about 4 µs per proxied request
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tokenbroker::cli::main()
}
