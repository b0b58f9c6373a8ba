//! Log output: human lines or JSON on stderr, routed around the progress bars.
//!
//! Logs carry names, counts, positions and timings; never row contents and never secrets
//! (URLs are printed redacted everywhere, see `pgtide_core::endpoint`).
//!
//! The database drivers log below `warn` what we must not: tokio-postgres prints every
//! statement's parameters at `debug` (the applier's parameters are arrays of row values), and
//! mysql_async's `log` records are forwarded too. So however `PGTIDE_LOG` is set, their
//! targets stay at `warn` ([`DRIVER_CLAMP`]); `PGTIDE_LOG=debug` is safe to hand out.

use std::io::Write;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-11-21T13:45:43Z  INFO phase phase="copy"`.
    Text,
    /// One JSON object per line.
    Json,
}

/// Buffers one formatted event and prints it in one piece.
pub struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let text = String::from_utf8_lossy(&self.0);
            crate::progress::print_line(text.trim_end_matches('\n'));
        }
    }
}

/// Makes a [`LineWriter`] per event.
#[derive(Clone, Copy)]
pub struct Lines;

impl<'a> MakeWriter<'a> for Lines {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(Vec::with_capacity(256))
    }
}

/// Targets held at `warn` whatever the configured filter says: below it they log row values.
pub const DRIVER_CLAMP: [&str; 2] = ["tokio_postgres=warn", "mysql_async=warn"];

/// The filter for `verbosity` (-1 quiet (warnings), 0 info, 1 debug, 2+ trace), or for the
/// `PGTIDE_LOG` directives `env` when set, with the drivers clamped ([`DRIVER_CLAMP`]).
pub fn filter(env: Option<&str>, verbosity: i8) -> EnvFilter {
    let level = match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let mut filter = env
        .and_then(|e| EnvFilter::try_new(e).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("{level},rustls=warn")));
    for clamp in DRIVER_CLAMP {
        // Added last, for the same target as any of the user's: this one wins.
        filter = filter.add_directive(clamp.parse().expect("a valid directive"));
    }
    filter
}

/// Install the global subscriber with [`filter`] (`PGTIDE_LOG` overrides `verbosity`).
pub fn init(format: LogFormat, verbosity: i8) {
    let env = std::env::var("PGTIDE_LOG").ok();
    let filter = filter(env.as_deref(), verbosity);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Lines)
        .with_target(false)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    /// What `filter(env, verbosity)` lets through of one event per (target, level).
    fn passes(env: Option<&str>, verbosity: i8) -> String {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry()
            .with(filter(env, verbosity))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(capture.clone())
                    .with_ansi(false),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "tokio_postgres::query", "driver-debug");
            tracing::info!(target: "tokio_postgres", "driver-info");
            tracing::warn!(target: "tokio_postgres::connection", "driver-warn");
            tracing::debug!(target: "mysql_async::conn", "mysql-debug");
            tracing::debug!(target: "pgtide_postgres::apply", "ours-debug");
            tracing::info!(target: "pgtide", "ours-info");
        });
        String::from_utf8(capture.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn drivers_never_log_below_warn_whatever_the_filter() {
        for (env, verbosity) in [
            (Some("debug"), 0),
            (Some("trace"), 0),
            (Some("tokio_postgres=trace,mysql_async=debug,debug"), 0),
            (None, 2),
        ] {
            let out = passes(env, verbosity);
            assert!(out.contains("ours-debug"), "{env:?}: {out}");
            assert!(out.contains("driver-warn"), "{env:?}: {out}");
            for hidden in ["driver-debug", "driver-info", "mysql-debug"] {
                assert!(!out.contains(hidden), "{env:?} let {hidden} through: {out}");
            }
        }
        let out = passes(Some("warn"), 0);
        assert!(
            !out.contains("ours-info") && out.contains("driver-warn"),
            "{out}"
        );
        let out = passes(None, 0);
        assert!(
            out.contains("ours-info") && !out.contains("ours-debug"),
            "{out}"
        );
    }
}
