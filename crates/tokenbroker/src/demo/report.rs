//! The demo's final table and its "try it yourself" lines.

use tokenbroker_emulator::Counters;

use super::jobs::Tally;

/// One approach's line of the final table.
pub(super) struct Row {
    approach: &'static str,
    /// Tokens the emulated Control Room issued (logins and refreshes).
    logins: u64,
    /// 401s the emulator served to the work-item API.
    unauthorized: u64,
    completed: u64,
    failed: u64,
}

impl Row {
    pub(super) fn new(approach: &'static str, counters: &Counters, tally: &Tally) -> Self {
        Self {
            approach,
            logins: counters.logins + counters.refreshes,
            unauthorized: counters.unauthorized,
            completed: Tally::get(&tally.completed),
            failed: Tally::get(&tally.failed),
        }
    }
}

pub(super) fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<22} {:>14} {:>10} {:>14} {:>12}\n",
        "approach", "logins issued", "401s seen", "runs complete", "runs failed"
    );
    out.push_str(&format!("{}\n", "-".repeat(76)));
    for row in rows {
        out.push_str(&format!(
            "{:<22} {:>14} {:>10} {:>14} {:>12}\n",
            row.approach, row.logins, row.unauthorized, row.completed, row.failed
        ));
    }
    out
}

/// Prints what to try against the broker that `--serve` keeps up.
pub(super) fn try_it(url: &str, key: &str, provider: &str) {
    println!("The broker stays up at {url} (Ctrl-C to stop). Try:\n");
    println!("  export TOKENBROKER_KEY={key}");
    println!("  curl -s -H \"Authorization: Bearer $TOKENBROKER_KEY\" {url}/v1/tokens/{provider}");
    println!(
        "  curl -s -H \"Authorization: Bearer $TOKENBROKER_KEY\" -H 'Accept: text/plain' {url}/v1/tokens/{provider}"
    );
    println!(
        "  curl -s -X POST -H \"Authorization: Bearer $TOKENBROKER_KEY\" -H 'Content-Type: application/json' \\\n       -d '{{\"generation\": 1}}' {url}/v1/tokens/{provider}/invalidate"
    );
    println!("  curl -s {url}/metrics | grep tokenbroker_");
    println!("  target/release/tokenbroker token {provider} --broker {url} --format header");
}
