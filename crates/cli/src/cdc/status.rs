//! What the operator sees while changes stream: lag in bytes and seconds, applied changes per
//! second, and per-table counts of inserts, updates, deletes and truncates; and the summary at
//! the end.

use crate::progress::{DisplayMode, print_line};
use pgtide_core::ident::QualifiedName;
use pgtide_core::lsn::Lsn;
use pgtide_core::size::human_bytes;
use pgtide_postgres::apply::{Applied, TableCounts, pg_time};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Default, Clone)]
struct State {
    phase: String,
    server_wal_end: Lsn,
    confirmed: Lsn,
    applied: Option<Applied>,
    caught_up: bool,
    transactions: u64,
    counts: BTreeMap<QualifiedName, TableCounts>,
    /// Totals of earlier connections of this run (counts restart with each applier).
    base_transactions: u64,
    base_counts: BTreeMap<QualifiedName, TableCounts>,
    samples: VecDeque<(Instant, u64)>,
    insert_only: Vec<String>,
}

/// Shared status of a streaming run.
#[derive(Debug, Default)]
pub struct CdcStatus {
    state: Mutex<State>,
    errors: std::sync::atomic::AtomicU64,
}

/// A snapshot of the status, for display and reports.
#[derive(Debug, Clone, Default)]
pub struct CdcView {
    /// `streaming`, `reconnecting`, ...
    pub phase: String,
    /// Bytes of WAL between what the server has and what is confirmed applied.
    pub lag_bytes: u64,
    /// Seconds between now and the commit of the last applied transaction, when behind.
    pub lag_seconds: f64,
    /// Applied changes per second over the last ~10 s.
    pub rate: f64,
    /// The last applied source transaction.
    pub applied: Option<Applied>,
    /// Transactions applied.
    pub transactions: u64,
    /// Per-table counts.
    pub counts: BTreeMap<QualifiedName, TableCounts>,
    /// Tables replicated for INSERT and TRUNCATE only.
    pub insert_only: Vec<String>,
}

impl CdcStatus {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().expect("status lock"))
    }

    /// A new connection starts counting from zero: keep what the previous one counted.
    pub fn rebase(&self) {
        self.with(|s| {
            s.base_transactions += s.transactions;
            s.transactions = 0;
            for (k, v) in std::mem::take(&mut s.counts) {
                let b = s.base_counts.entry(k).or_default();
                b.inserts += v.inserts;
                b.updates += v.updates;
                b.deletes += v.deletes;
                b.truncates += v.truncates;
            }
        });
    }

    /// Count an error that was retried.
    pub fn count_error(&self) {
        self.errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Errors retried so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Set the phase.
    pub fn set_phase(&self, phase: &str) {
        self.with(|s| s.phase = phase.to_string());
    }

    /// Tables replicated insert-only, for the display and the report.
    pub fn set_insert_only(&self, names: Vec<String>) {
        self.with(|s| s.insert_only = names);
    }

    /// The server's WAL end as last reported.
    pub fn server_at(&self, lsn: Lsn) {
        self.with(|s| s.server_wal_end = s.server_wal_end.max(lsn));
    }

    /// After a batch commit or a confirmation.
    pub fn update(
        &self,
        applied: Option<Applied>,
        confirmed: Lsn,
        caught_up: bool,
        transactions: u64,
        counts: &std::collections::HashMap<QualifiedName, TableCounts>,
    ) {
        self.with(|s| {
            s.applied = applied;
            s.confirmed = confirmed;
            s.caught_up = caught_up;
            s.transactions = transactions;
            s.counts = counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let total: u64 = s
                .counts
                .values()
                .chain(s.base_counts.values())
                .map(|c| c.total())
                .sum();
            s.samples.push_back((Instant::now(), total));
            while s.samples.len() > 2
                && s.samples
                    .front()
                    .map(|f| f.0.elapsed() > Duration::from_secs(10))
                    .unwrap_or(false)
            {
                s.samples.pop_front();
            }
        });
    }

    /// A consistent view for display.
    pub fn view(&self) -> CdcView {
        self.with(|s| {
            let rate = match (s.samples.front(), s.samples.back()) {
                (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64(),
                _ => 0.0,
            };
            let lag_seconds = match (s.caught_up, s.applied) {
                (true, _) | (false, None) => 0.0,
                (false, Some(a)) => SystemTime::now()
                    .duration_since(pg_time(a.commit_time))
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
            };
            let mut counts = s.base_counts.clone();
            for (k, v) in &s.counts {
                let c = counts.entry(k.clone()).or_default();
                c.inserts += v.inserts;
                c.updates += v.updates;
                c.deletes += v.deletes;
                c.truncates += v.truncates;
            }
            CdcView {
                phase: s.phase.clone(),
                lag_bytes: s.server_wal_end.0.saturating_sub(s.confirmed.0),
                lag_seconds,
                rate,
                applied: s.applied,
                transactions: s.base_transactions + s.transactions,
                counts,
                insert_only: s.insert_only.clone(),
            }
        })
    }
}

impl CdcView {
    /// One status line.
    pub fn line(&self) -> String {
        let total = self
            .counts
            .values()
            .fold(TableCounts::default(), |mut a, c| {
                a.inserts += c.inserts;
                a.updates += c.updates;
                a.deletes += c.deletes;
                a.truncates += c.truncates;
                a
            });
        format!(
            "{} | lag {} / {:.1} s | {:.0} changes/s | applied {} | {} txns, I {} U {} D {} T {}",
            self.phase,
            human_bytes(self.lag_bytes),
            self.lag_seconds,
            self.rate,
            self.applied
                .map(|a| a.end_lsn.to_string())
                .unwrap_or_else(|| "-".into()),
            self.transactions,
            total.inserts,
            total.updates,
            total.deletes,
            total.truncates
        )
    }

    /// The end-of-run summary.
    pub fn render(&self, task: &str, stop: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\nchange data capture of task {task}: {stop}");
        let _ = writeln!(
            out,
            "{:<40} {:>10} {:>10} {:>10} {:>9}",
            "table", "inserts", "updates", "deletes", "truncates"
        );
        for (n, c) in &self.counts {
            let _ = writeln!(
                out,
                "{:<40} {:>10} {:>10} {:>10} {:>9}",
                n.to_string(),
                c.inserts,
                c.updates,
                c.deletes,
                c.truncates
            );
        }
        let _ = writeln!(
            out,
            "applied {} source transactions; last applied commit ends at {}",
            self.transactions,
            self.applied
                .map(|a| a.end_lsn.to_string())
                .unwrap_or_else(|| "-".into())
        );
        for t in &self.insert_only {
            let _ = writeln!(
                out,
                "warning: {t} is replicated for INSERT and TRUNCATE only (cdc.tables_without_key: insert-only); its updates and deletes are not"
            );
        }
        out
    }
}

/// Show the status until `stop` is notified: a refreshing line on a terminal, a log line every
/// `n` seconds otherwise.
pub fn spawn_display(
    status: Arc<CdcStatus>,
    mode: DisplayMode,
    stop: Arc<tokio::sync::Notify>,
) -> Option<tokio::task::JoinHandle<()>> {
    let every = match mode {
        DisplayMode::Quiet => return None,
        DisplayMode::Bars => Duration::from_secs(1),
        DisplayMode::Lines(n) => Duration::from_secs(n.max(1)),
    };
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.notified() => return,
                _ = tick.tick() => {}
            }
            let v = status.view();
            if v.phase.is_empty() {
                continue; // still loading: the load has its own display
            }
            match mode {
                DisplayMode::Bars => print_line(&v.line()),
                _ => {
                    let top: Vec<String> = {
                        let mut t: Vec<(&QualifiedName, &TableCounts)> = v.counts.iter().collect();
                        t.sort_by_key(|(_, c)| std::cmp::Reverse(c.total()));
                        t.into_iter()
                            .take(5)
                            .map(|(n, c)| {
                                format!(
                                    "{n} I{} U{} D{} T{}",
                                    c.inserts, c.updates, c.deletes, c.truncates
                                )
                            })
                            .collect()
                    };
                    tracing::info!(
                        phase = %v.phase,
                        lag_bytes = v.lag_bytes,
                        lag_seconds = format!("{:.1}", v.lag_seconds),
                        changes_per_s = format!("{:.0}", v.rate),
                        applied = %v.applied.map(|a| a.end_lsn.to_string()).unwrap_or_else(|| "-".into()),
                        transactions = v.transactions,
                        tables = %top.join("; "),
                        "cdc"
                    );
                }
            }
        }
    }))
}
