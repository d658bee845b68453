//! The demo's final table and its "try it yourself" lines.

use tokenbroker_emulator::{Counters, PoolCounters};

use super::jobs::Tally;
use super::pool::PoolTally;

/// One approach's line of the final table.
pub(super) struct Row {
    approach: &'static str,
    /// Tokens the issuer handed out (logins, refreshes, client-credentials tokens).
    issued: u64,
    /// Refusals the other side served: 401s from the API, 429s from the token endpoint.
    refused: u64,
    /// Work completed: runs for the Control Room jobs, API calls for the pool workers.
    done: u64,
    failed: u64,
}

impl Row {
    /// A line of the Control Room act.
    pub(super) fn control_room(approach: &'static str, counters: &Counters, tally: &Tally) -> Self {
        Self {
            approach,
            issued: counters.logins + counters.refreshes,
            refused: counters.unauthorized,
            done: Tally::get(&tally.completed),
            failed: Tally::get(&tally.failed),
        }
    }

    /// A line of the capped-pool act.
    pub(super) fn pool(approach: &'static str, counters: &PoolCounters, tally: &PoolTally) -> Self {
        Self {
            approach,
            issued: counters.issued,
            refused: counters.rejected_429 + counters.unauthorized,
            done: PoolTally::get(&tally.calls_ok),
            failed: PoolTally::get(&tally.failed),
        }
    }
}

pub(super) fn table(rows: &[Row]) -> String {
    let line = |cells: [&str; 5]| {
        format!(
            "{:<36} {:>14} {:>12} {:>10} {:>8}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4]
        )
    };
    let mut out = line([
        "approach",
        "tokens issued",
        "401s / 429s",
        "work done",
        "failed",
    ]);
    out.push_str(&format!("{}\n", "-".repeat(84)));
    for row in rows {
        out.push_str(&line([
            row.approach,
            &row.issued.to_string(),
            &row.refused.to_string(),
            &row.done.to_string(),
            &row.failed.to_string(),
        ]));
    }
    out.push_str(
        "\nwork done: work items completed (Control Room), API calls answered (capped pool)\n",
    );
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
