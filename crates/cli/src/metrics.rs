//! `pgtide run --metrics-addr HOST:PORT`: Prometheus metrics and a JSON status over HTTP.
//!
//! Two paths: `GET /metrics` (Prometheus text exposition format 0.0.4) and `GET /status`
//! (JSON). The server is a few dozen lines on tokio's TCP listener rather than an HTTP
//! framework: it answers two fixed GET paths with `Connection: close`, reads at most 8 KB of
//! request, and never parses a body, so there is little to get wrong and nothing to add to the
//! dependency tree. Bind it to a loopback or private address: it has no authentication.
//!
//! What is exposed is counters and positions only: no row contents, no connection strings, no
//! secrets.

use crate::cdc::CdcStatus;
use crate::progress::Progress;
use pgtide_core::{Error, ErrorKind, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the metrics endpoint reads from.
#[derive(Clone)]
pub struct Sources {
    /// Task name (a label on every metric).
    pub task: String,
    /// Full-load progress.
    pub progress: Arc<Progress>,
    /// Change data capture status (absent for full-load tasks).
    pub cdc: Option<Arc<CdcStatus>>,
}

#[derive(Serialize)]
struct TableJson {
    table: String,
    rows_loaded: u64,
    bytes_loaded: u64,
    inserts: u64,
    updates: u64,
    deletes: u64,
    truncates: u64,
}

#[derive(Serialize)]
struct StatusJson {
    task: String,
    phase: String,
    errors: u64,
    rows_loaded: u64,
    bytes_loaded: u64,
    cdc_phase: Option<String>,
    lag_bytes: Option<u64>,
    lag_seconds: Option<f64>,
    changes_per_second: Option<f64>,
    transactions_applied: Option<u64>,
    applied_end_lsn: Option<String>,
    tables: Vec<TableJson>,
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Sources {
    fn tables(&self) -> Vec<TableJson> {
        let mut out: std::collections::BTreeMap<String, TableJson> = Default::default();
        for t in self.progress.tables().values() {
            out.insert(
                t.name.clone(),
                TableJson {
                    table: t.name.clone(),
                    rows_loaded: t.rows,
                    bytes_loaded: t.bytes,
                    inserts: 0,
                    updates: 0,
                    deletes: 0,
                    truncates: 0,
                },
            );
        }
        if let Some(cdc) = &self.cdc {
            for (name, c) in cdc.view().counts {
                let name = name.to_string();
                let t = out.entry(name.clone()).or_insert(TableJson {
                    table: name,
                    rows_loaded: 0,
                    bytes_loaded: 0,
                    inserts: 0,
                    updates: 0,
                    deletes: 0,
                    truncates: 0,
                });
                t.inserts = c.inserts;
                t.updates = c.updates;
                t.deletes = c.deletes;
                t.truncates = c.truncates;
            }
        }
        out.into_values().collect()
    }

    fn status(&self) -> StatusJson {
        let tables = self.tables();
        let view = self.cdc.as_ref().map(|c| c.view());
        StatusJson {
            task: self.task.clone(),
            phase: self.progress.phase(),
            errors: self.cdc.as_ref().map(|c| c.errors()).unwrap_or(0),
            rows_loaded: tables.iter().map(|t| t.rows_loaded).sum(),
            bytes_loaded: tables.iter().map(|t| t.bytes_loaded).sum(),
            cdc_phase: view.as_ref().map(|v| v.phase.clone()),
            lag_bytes: view.as_ref().map(|v| v.lag_bytes),
            lag_seconds: view.as_ref().map(|v| v.lag_seconds),
            changes_per_second: view.as_ref().map(|v| v.rate),
            transactions_applied: view.as_ref().map(|v| v.transactions),
            applied_end_lsn: view
                .as_ref()
                .and_then(|v| v.applied.map(|a| a.end_lsn.to_string())),
            tables,
        }
    }

    /// The Prometheus text exposition.
    pub fn render_prometheus(&self) -> String {
        let s = self.status();
        let task = escape_label(&self.task);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{{task=\"{task}\"{labels}}} {value}");
            }
        };
        let per_table = |f: &dyn Fn(&TableJson) -> u64| -> Vec<(String, String)> {
            s.tables
                .iter()
                .map(|t| {
                    (
                        format!(",table=\"{}\"", escape_label(&t.table)),
                        f(t).to_string(),
                    )
                })
                .collect()
        };
        metric(
            "pgtide_full_load_rows_total",
            "counter",
            "Rows copied by the full load.",
            per_table(&|t| t.rows_loaded),
        );
        metric(
            "pgtide_full_load_bytes_total",
            "counter",
            "Bytes of COPY data moved by the full load.",
            per_table(&|t| t.bytes_loaded),
        );
        let mut changes = Vec::new();
        for t in &s.tables {
            for (op, n) in [
                ("insert", t.inserts),
                ("update", t.updates),
                ("delete", t.deletes),
                ("truncate", t.truncates),
            ] {
                changes.push((
                    format!(",table=\"{}\",op=\"{op}\"", escape_label(&t.table)),
                    n.to_string(),
                ));
            }
        }
        metric(
            "pgtide_cdc_changes_applied_total",
            "counter",
            "Row changes applied to the target by change data capture, by table and kind.",
            changes,
        );
        metric(
            "pgtide_cdc_transactions_applied_total",
            "counter",
            "Source transactions applied by this process.",
            vec![(
                String::new(),
                s.transactions_applied.unwrap_or(0).to_string(),
            )],
        );
        metric(
            "pgtide_cdc_lag_bytes",
            "gauge",
            "Source WAL not yet confirmed applied, in bytes.",
            vec![(String::new(), s.lag_bytes.unwrap_or(0).to_string())],
        );
        metric(
            "pgtide_cdc_lag_seconds",
            "gauge",
            "Seconds since the commit of the last applied source transaction, when behind.",
            vec![(
                String::new(),
                format!("{:.3}", s.lag_seconds.unwrap_or(0.0)),
            )],
        );
        metric(
            "pgtide_errors_total",
            "counter",
            "Errors change data capture met and retried (a fatal error ends the process).",
            vec![(String::new(), s.errors.to_string())],
        );
        out
    }

    /// The JSON status.
    pub fn render_json(&self) -> String {
        serde_json::to_string_pretty(&self.status()).unwrap_or_else(|_| "{}".into())
    }
}

/// Bind `addr` and serve until the process ends. Binding errors are returned at once.
pub async fn serve(addr: &str, sources: Sources) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("--metrics-addr {addr}: cannot listen there"),
        )
        .with_source(e)
        .with_hint("give a free HOST:PORT, e.g. 127.0.0.1:9187")
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::new(ErrorKind::Io, "reading the metrics address").with_source(e))?;
    tracing::info!(addr = %local, "serving /metrics and /status");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                // Out of file descriptors, say: do not spin, and leave them to the migration.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            };
            let sources = sources.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                // Read until the end of the request head (or 8 KB, or 5 s).
                let read = async {
                    while n < buf.len() {
                        match sock.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(m) => n += m,
                        }
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read).await;
                let head = String::from_utf8_lossy(&buf[..n]);
                let mut parts = head.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let (status, ctype, body) = match (method, path) {
                    ("GET", "/metrics") => (
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        sources.render_prometheus(),
                    ),
                    ("GET", "/status") => ("200 OK", "application/json", sources.render_json()),
                    ("GET", _) => (
                        "404 Not Found",
                        "text/plain",
                        "try /metrics or /status\n".into(),
                    ),
                    _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}
