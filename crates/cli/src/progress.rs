//! Progress of a running load, and its display.
//!
//! Workers update [`Progress`] (counters behind one mutex, touched once per ~256 kB flushed,
//! so contention is negligible). A separate display task reads it: on a terminal, one bar per
//! active table (rows, bytes, rate, ETA) above an overall bar; elsewhere (CI, a log file), a
//! plain `progress` log line every few seconds. Rates and ETAs come from the bytes moved, and
//! the total is the source's on-disk size, which the COPY stream only approximates; bars stop
//! at 99 % until the table's last chunk commits.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pgtide_core::size::human_bytes;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Per-table counters.
#[derive(Debug, Clone, Default)]
pub struct TableProgress {
    /// Display name.
    pub name: String,
    /// Expected bytes (source on-disk size).
    pub expected_bytes: u64,
    /// Expected rows (planner estimate).
    pub expected_rows: u64,
    /// Bytes moved in this run.
    pub bytes: u64,
    /// Rows moved in this run.
    pub rows: u64,
    /// Chunks in the plan.
    pub chunks: usize,
    /// Chunks committed (including earlier runs).
    pub chunks_done: usize,
    /// Chunks being copied now.
    pub active: usize,
    /// When the first chunk of this run started.
    pub started: Option<Instant>,
    /// Wall time from first chunk start to last chunk commit, once copied.
    pub copy_time: Option<Duration>,
}

#[derive(Debug, Default)]
struct State {
    phase: String,
    /// When the last chunk of this run committed.
    last_chunk_at: Option<Instant>,
    tables: BTreeMap<u32, TableProgress>,
    ddl_total: usize,
    ddl_done: usize,
}

/// Shared progress of one run.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    state: Mutex<State>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Empty progress, clock started now.
    pub fn new() -> Self {
        Progress {
            started: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().expect("progress lock"))
    }

    /// Enter a phase ("schema", "copy", "post-load", ...).
    pub fn set_phase(&self, phase: &str) {
        self.with(|s| s.phase = phase.to_string());
        tracing::info!(phase, "phase");
    }

    /// Current phase.
    pub fn phase(&self) -> String {
        self.with(|s| s.phase.clone())
    }

    /// Add a table to track.
    pub fn register(
        &self,
        oid: u32,
        name: String,
        expected_bytes: u64,
        expected_rows: u64,
        chunks: usize,
        chunks_done: usize,
    ) {
        self.with(|s| {
            s.tables.insert(
                oid,
                TableProgress {
                    name,
                    expected_bytes,
                    expected_rows,
                    chunks,
                    chunks_done,
                    ..Default::default()
                },
            );
        });
    }

    /// Number of DDL jobs planned.
    pub fn set_ddl_total(&self, n: usize) {
        self.with(|s| s.ddl_total = n);
    }

    /// A DDL job finished.
    pub fn ddl_finished(&self) {
        self.with(|s| s.ddl_done += 1);
    }

    /// A chunk of `oid` started.
    pub fn chunk_started(&self, oid: u32) {
        self.with(|s| {
            if let Some(t) = s.tables.get_mut(&oid) {
                t.active += 1;
                t.started.get_or_insert_with(Instant::now);
            }
        });
    }

    /// Bytes and rows moved for `oid`.
    pub fn add(&self, oid: u32, bytes: u64, rows: u64) {
        self.with(|s| {
            if let Some(t) = s.tables.get_mut(&oid) {
                t.bytes += bytes;
                t.rows += rows;
            }
        });
    }

    /// A chunk of `oid` ended; `committed` when it was recorded as done. Returns the table's
    /// counters when this was its last chunk.
    pub fn chunk_ended(
        &self,
        oid: u32,
        committed: bool,
        undo_bytes: u64,
        undo_rows: u64,
    ) -> Option<TableProgress> {
        self.with(|s| {
            let t = s.tables.get_mut(&oid)?;
            t.active = t.active.saturating_sub(1);
            if !committed {
                t.bytes = t.bytes.saturating_sub(undo_bytes);
                t.rows = t.rows.saturating_sub(undo_rows);
                return None;
            }
            t.chunks_done += 1;
            s.last_chunk_at = Some(Instant::now());
            if t.chunks_done == t.chunks {
                t.copy_time = t.started.map(|st| st.elapsed());
                return Some(t.clone());
            }
            None
        })
    }

    /// When the last chunk of this run committed, if any did.
    pub fn last_chunk_at(&self) -> Option<Instant> {
        self.with(|s| s.last_chunk_at)
    }

    /// A snapshot of every table's counters.
    pub fn tables(&self) -> BTreeMap<u32, TableProgress> {
        self.with(|s| s.tables.clone())
    }

    /// Seconds since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn overall(&self) -> (u64, u64, u64, usize, usize, usize, usize) {
        self.with(|s| {
            let mut expected = 0;
            let mut done_bytes = 0;
            let mut rows = 0;
            let (mut chunks, mut chunks_done) = (0, 0);
            for t in s.tables.values() {
                // Tables finished in an earlier run count as done, at their expected size.
                if t.chunks_done == t.chunks && t.started.is_none() {
                    continue;
                }
                expected += t.expected_bytes;
                done_bytes += if t.chunks_done == t.chunks {
                    t.expected_bytes
                } else {
                    t.bytes.min(t.expected_bytes * 99 / 100)
                };
                rows += t.rows;
                chunks += t.chunks;
                chunks_done += t.chunks_done;
            }
            (
                expected,
                done_bytes,
                rows,
                chunks,
                chunks_done,
                s.ddl_total,
                s.ddl_done,
            )
        })
    }
}

static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// Write a log line without tearing the progress bars.
pub fn print_line(line: &str) {
    match MULTI.get() {
        Some(m) if !m.is_hidden() => {
            let _ = m.println(line);
        }
        _ => eprintln!("{line}"),
    }
}

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayMode {
    /// Bars on stderr (a terminal).
    Bars,
    /// A log line every `n` seconds.
    Lines(u64),
    /// Nothing.
    Quiet,
}

impl DisplayMode {
    /// Bars when stderr is a terminal, log lines otherwise.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            DisplayMode::Bars
        } else {
            DisplayMode::Lines(10)
        }
    }
}

/// The running display; [`Display::finish`] removes the bars.
pub struct Display {
    stop: Arc<tokio::sync::Notify>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Display {
    /// Start displaying `progress`.
    pub fn start(progress: Arc<Progress>, mode: DisplayMode) -> Self {
        let stop = Arc::new(tokio::sync::Notify::new());
        let handle = match mode {
            DisplayMode::Quiet => None,
            DisplayMode::Lines(every) => Some(tokio::spawn(lines(progress, every, stop.clone()))),
            DisplayMode::Bars => Some(tokio::spawn(bars(progress, stop.clone()))),
        };
        Display { stop, handle }
    }

    /// Stop and clear.
    pub async fn finish(mut self) {
        self.stop.notify_one();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

fn rate_eta(done: u64, total: u64, elapsed: Duration) -> (String, String) {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let eta = if rate > 0.0 && total > done {
        format!("{:.0}s", (total - done) as f64 / rate)
    } else {
        "-".into()
    };
    (format!("{}/s", human_bytes(rate as u64)), eta)
}

async fn lines(progress: Arc<Progress>, every: u64, stop: Arc<tokio::sync::Notify>) {
    let mut tick = tokio::time::interval(Duration::from_secs(every.max(1)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.notified() => return,
            _ = tick.tick() => {}
        }
        let (expected, done, rows, chunks, chunks_done, ddl_total, ddl_done) = progress.overall();
        let (rate, eta) = rate_eta(done, expected, progress.elapsed());
        let active: Vec<String> = progress
            .tables()
            .values()
            .filter(|t| t.active > 0)
            .take(4)
            .map(|t| {
                let pct = (t.bytes * 100)
                    .checked_div(t.expected_bytes)
                    .unwrap_or(0)
                    .min(99);
                format!("{} {pct}%", t.name)
            })
            .collect();
        let pct = (done * 100).checked_div(expected).unwrap_or(100);
        tracing::info!(
            phase = %progress.phase(),
            percent = pct,
            copied = %human_bytes(done),
            expected = %human_bytes(expected),
            rows,
            chunks = format!("{chunks_done}/{chunks}"),
            indexes = format!("{ddl_done}/{ddl_total}"),
            rate = %rate,
            eta = %eta,
            active = %active.join(", "),
            "progress"
        );
    }
}

async fn bars(progress: Arc<Progress>, stop: Arc<tokio::sync::Notify>) {
    let multi = MULTI
        .get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::hidden()))
        .clone();
    multi.set_draw_target(ProgressDrawTarget::stderr());
    let table_style = ProgressStyle::with_template(
        "{prefix:30!} [{bar:24.cyan/blue}] {percent:>3}% {msg:>14} {binary_bytes_per_sec:>11} eta {eta:>4}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    let total_style = ProgressStyle::with_template(
        "{prefix:30!} [{bar:24.green/white}] {percent:>3}% {msg} {binary_bytes_per_sec:>11} eta {eta:>4} ({elapsed})",
    )
    .expect("valid template")
    .progress_chars("=> ");
    let total = multi.add(
        ProgressBar::new(1)
            .with_style(total_style)
            .with_prefix("total"),
    );
    let mut shown: BTreeMap<u32, ProgressBar> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(150));
    loop {
        tokio::select! {
            _ = stop.notified() => break,
            _ = tick.tick() => {}
        }
        for (oid, t) in progress.tables() {
            let active = t.active > 0 && t.chunks_done < t.chunks;
            match (shown.get(&oid), active) {
                (None, true) => {
                    let b = multi.insert_before(
                        &total,
                        ProgressBar::new(t.expected_bytes.max(1))
                            .with_style(table_style.clone())
                            .with_prefix(t.name.clone()),
                    );
                    b.set_position(t.bytes.min(t.expected_bytes * 99 / 100));
                    b.set_message(format!("{} rows", t.rows));
                    shown.insert(oid, b);
                }
                (Some(b), true) => {
                    b.set_position(t.bytes.min(t.expected_bytes * 99 / 100));
                    b.set_message(format!("{} rows", t.rows));
                }
                (Some(_), false) => {
                    if let Some(b) = shown.remove(&oid) {
                        b.finish_and_clear();
                        multi.remove(&b);
                    }
                }
                (None, false) => {}
            }
        }
        let (expected, done, rows, chunks, chunks_done, ddl_total, ddl_done) = progress.overall();
        total.set_length(expected.max(1));
        total.set_position(done);
        total.set_message(format!(
            "{rows} rows, chunks {chunks_done}/{chunks}, indexes {ddl_done}/{ddl_total} [{}]",
            progress.phase()
        ));
    }
    for (_, b) in shown {
        b.finish_and_clear();
        multi.remove(&b);
    }
    total.finish_and_clear();
    multi.remove(&total);
    multi.set_draw_target(ProgressDrawTarget::hidden());
}
