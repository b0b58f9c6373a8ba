//! Crash points for tests.
//!
//! Exactly-once delivery has to survive a process dying at the worst moment, for instance after
//! the target committed a batch and before the source was told. Timing a `kill -9` into such a
//! window is luck; a failpoint makes it certain. Setting `PGTIDE_FAILPOINT=<name>` makes the
//! process abort (no cleanup, like SIGKILL) the first time it reaches the point of that name.
//! Unset, a failpoint costs one cached environment lookup.
//!
//! Points: `apply-before-commit` (a batch is written but not committed), `cdc-after-commit`
//! (a batch is committed, its position not yet confirmed to the source), `load-after-chunk`
//! (a chunk committed during the full load), `catch-up-before-advance` (at a catch-up chunk's
//! end: its last batch handed to the target and possibly not committed, earlier batches
//! committed, the slot not yet moved to them).

use std::sync::OnceLock;

static ARMED: OnceLock<Option<String>> = OnceLock::new();

/// Abort the process if `PGTIDE_FAILPOINT` names this point.
pub fn hit(name: &str) {
    let armed = ARMED.get_or_init(|| {
        std::env::var("PGTIDE_FAILPOINT")
            .ok()
            .filter(|s| !s.is_empty())
    });
    if armed.as_deref() == Some(name) {
        eprintln!("pgtide: failpoint {name} reached, aborting");
        std::process::abort();
    }
}
