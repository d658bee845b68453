//! The `tokenbroker` binary: parses the command line and hands over to [`tokenbroker::cli`].

fn main() -> std::process::ExitCode {
    tokenbroker::cli::main()
}
