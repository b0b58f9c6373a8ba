//! The end-of-run summary: one line per table, then totals and where the time went.

use pgtide_core::size::human_bytes;
use std::fmt::Write as _;
use std::time::Duration;

/// What happened to one table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableReport {
    /// Source name (display form).
    pub name: String,
    /// Rows now on the target from this load (all runs).
    pub rows: u64,
    /// COPY bytes moved (all runs).
    pub bytes: u64,
    /// Seconds spent copying: wall time in this run, or the recorded time of an earlier run.
    pub seconds: f64,
    /// `binary` or `text`.
    pub format: String,
    /// Number of chunks.
    pub chunks: usize,
    /// Copied by an earlier, interrupted run and not redone.
    pub from_earlier_run: bool,
}

/// The whole run.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Task name.
    pub task: String,
    /// Per table, largest first.
    pub tables: Vec<TableReport>,
    /// Named phases and their durations, in order.
    pub phases: Vec<(String, Duration)>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Things the operator should know.
    pub warnings: Vec<String>,
    /// This run resumed an interrupted one.
    pub resumed: bool,
    /// Indexes and constraints built.
    pub ddl_jobs: usize,
    /// Sequences set.
    pub sequences: usize,
    /// Materialized views refreshed.
    pub materialized_views: usize,
}

impl LoadReport {
    /// Total rows.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }

    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.tables.iter().map(|t| t.bytes).sum()
    }

    /// The summary as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let width = self
            .tables
            .iter()
            .map(|t| t.name.chars().count())
            .max()
            .unwrap_or(5)
            .clamp(5, 48);
        let _ = writeln!(
            out,
            "\nfull load of task {}{}",
            self.task,
            if self.resumed { " (resumed)" } else { "" }
        );
        let _ = writeln!(
            out,
            "{:<width$} {:>12} {:>11} {:>9} {:>7} {:>7}",
            "table", "rows", "size", "seconds", "format", "chunks"
        );
        for t in &self.tables {
            let name: String = if t.name.chars().count() > width {
                let mut s: String = t.name.chars().take(width - 1).collect();
                s.push('~');
                s
            } else {
                t.name.clone()
            };
            let _ = writeln!(
                out,
                "{:<width$} {:>12} {:>11} {:>9.2} {:>7} {:>7}{}",
                name,
                t.rows,
                human_bytes(t.bytes),
                t.seconds,
                t.format,
                t.chunks,
                if t.from_earlier_run {
                    "  (earlier run)"
                } else {
                    ""
                }
            );
        }
        let secs = self.elapsed.as_secs_f64();
        let _ = writeln!(
            out,
            "total: {} tables, {} rows, {} in {:.1} s ({}/s); {} indexes and constraints, {} sequences, {} materialized views",
            self.tables.len(),
            self.rows(),
            human_bytes(self.bytes()),
            secs,
            human_bytes((self.bytes() as f64 / secs.max(0.001)) as u64),
            self.ddl_jobs,
            self.sequences,
            self.materialized_views
        );
        if !self.phases.is_empty() {
            let phases: Vec<String> = self
                .phases
                .iter()
                .map(|(n, d)| format!("{n} {:.1} s", d.as_secs_f64()))
                .collect();
            let _ = writeln!(out, "phases: {}", phases.join(", "));
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rows_totals_and_warnings() {
        let r = LoadReport {
            task: "shop".into(),
            tables: vec![
                TableReport {
                    name: "public.a".into(),
                    rows: 10,
                    bytes: 2048,
                    seconds: 1.5,
                    format: "binary".into(),
                    chunks: 2,
                    from_earlier_run: false,
                },
                TableReport {
                    name: "public.\"My Table\"".into(),
                    rows: 5,
                    bytes: 10,
                    seconds: 0.1,
                    format: "text".into(),
                    chunks: 1,
                    from_earlier_run: true,
                },
            ],
            elapsed: Duration::from_secs(2),
            warnings: vec!["something".into()],
            ..Default::default()
        };
        let s = r.render();
        assert!(s.contains("total: 2 tables, 15 rows"), "{s}");
        assert!(s.contains("(earlier run)"));
        assert!(s.contains("warning: something"));
    }
}
