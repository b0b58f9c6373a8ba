//! The operator's request to stop (SIGINT, SIGTERM), as a value the long-running loops can wait
//! on. A full load abandons its in-flight chunks (they are redone on resume); change data capture
//! finishes its batch, records the checkpoint, confirms it to the source and exits cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

/// A one-way "please stop" flag.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<(AtomicBool, Notify)>,
}

impl Shutdown {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask everyone to stop.
    pub fn trigger(&self) {
        self.inner.0.store(true, Ordering::SeqCst);
        self.inner.1.notify_waiters();
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        self.inner.0.load(Ordering::SeqCst)
    }

    /// Resolves once triggered.
    pub async fn wait(&self) {
        loop {
            let n = self.inner.1.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_triggered() {
                return;
            }
            n.await;
        }
    }

    /// Trigger on SIGINT or SIGTERM (spawned on the current runtime).
    pub fn install_signal_handlers(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                if let Ok(mut term) = signal(SignalKind::terminate()) {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                } else {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            tracing::warn!("stop requested; finishing the current batch");
            me.trigger();
        });
    }
}
