//! Log output: human lines or JSON on stderr, routed around the progress bars.
//!
//! Logs carry names, counts, positions and timings; never row contents and never secrets
//! (URLs are printed redacted everywhere, see `pgtide_core::endpoint`).

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

/// Install the global subscriber. `verbosity`: -1 quiet (warnings), 0 info, 1 debug, 2+ trace.
/// `PGTIDE_LOG` (an `EnvFilter` directive) overrides it.
pub fn init(format: LogFormat, verbosity: i8) {
    let level = match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("PGTIDE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},tokio_postgres=warn,rustls=warn")));
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
