//! The load's workers. Each holds one source connection inside the load snapshot and one target
//! connection, takes jobs from the scheduler, and replaces its connections after any failed job.

use super::*;

/// Attempts for one chunk or DDL job when errors are retryable.
pub(super) const JOB_ATTEMPTS: u32 = 5;

/// What the workers share.
/// Stops in-flight jobs of every worker at once (after a failure, or when the run is dropped).
#[derive(Default)]
pub(super) struct Cancel {
    flag: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Cancel {
    /// Ask every worker to abandon its job.
    pub(super) fn fire(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Resolves once [`Cancel::fire`] was called.
    pub(super) async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.flag.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

pub(super) struct Shared {
    pub(super) task: Task,
    pub(super) snapshot: String,
    /// Run on every target connection: pg_restore's session settings plus ours.
    pub(super) target_setup: String,
    pub(super) progress: Arc<Progress>,
    pub(super) scheduler: Scheduler<CopyJob, DdlJob>,
    /// Every table DDL refers to (including partitioned roots), for names in state updates.
    pub(super) names: HashMap<u32, QualifiedName>,
    /// Abandons in-flight jobs.
    pub(super) cancel: Cancel,
}

impl Shared {
    /// Stop handing out work and abandon in-flight jobs.
    pub(super) fn stop(&self) {
        self.scheduler.stop();
        self.cancel.fire();
    }
}

/// Run `worker` on `threads` dedicated threads, each with its own single-threaded runtime.
///
/// A worker's copy loop and the I/O tasks of its two connections then share one thread: every
/// row that tokio-postgres hands from the socket task to the copy loop stays on that thread,
/// instead of waking another thread per row. On two cores this cut the load's CPU time spent
/// in the scheduler and futexes from about a third to a few percent.
pub(super) async fn run_workers(shared: Arc<Shared>, threads: usize) -> Result<()> {
    struct StopOnDrop(Arc<Shared>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.stop();
        }
    }
    let guard = StopOnDrop(shared.clone());
    let mut handles = Vec::new();
    for i in 0..threads {
        let shared = shared.clone();
        let h = std::thread::Builder::new()
            .name(format!("pgtide-load-{i}"))
            .spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        Error::internal(format!("cannot start a load worker's runtime: {e}"))
                    })?;
                rt.block_on(worker(shared, i))
            })
            .map_err(|e| Error::internal(format!("cannot start a load worker thread: {e}")))?;
        handles.push(h);
    }
    let results = tokio::task::spawn_blocking(move || {
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::internal("a load worker panicked")))
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| Error::internal(format!("joining the load workers: {e}")))?;
    drop(guard);
    // The first real failure is the cause; the others were cancelled because of it.
    let mut first = None;
    for r in results {
        if let Err(e) = r {
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

pub(super) struct WorkerConns {
    pub(super) source: Client,
    pub(super) target: Client,
}

pub(super) async fn open_worker(shared: &Shared) -> Result<WorkerConns> {
    let source = connect(&shared.task.source.url, Side::Source).await?;
    begin_in_snapshot(&source, &shared.snapshot).await.map_err(|e| {
        if e.kind() == ErrorKind::Database || e.kind() == ErrorKind::NotFound {
            Error::new(
                ErrorKind::Connection,
                "the load snapshot is gone (the source connection that held it was lost)",
            )
            .with_source(e)
            .with_hint("re-run the same command: finished chunks are kept, the rest is copied from a new snapshot")
        } else {
            e
        }
    })?;
    let target = connect(&shared.task.target.url, Side::Target).await?;
    target
        .batch_execute(&shared.target_setup)
        .await
        .map_err(|e| classify(e, "preparing a target session"))?;
    Ok(WorkerConns { source, target })
}

pub(super) async fn worker(shared: Arc<Shared>, id: usize) -> Result<()> {
    let mut conns: Option<WorkerConns> = None;
    while let Some(job) = shared.scheduler.next().await {
        let mut attempt = 1;
        loop {
            if conns.is_none() {
                match with_retries(3, "opening worker connections", || open_worker(&shared)).await {
                    Ok(c) => conns = Some(c),
                    Err(e) => {
                        shared.stop();
                        return Err(e);
                    }
                }
            }
            let c = conns.as_ref().expect("connections are open");
            let run = async {
                match &job {
                    Job::Copy(j) => run_copy(&shared, c, j).await,
                    Job::Ddl(j) => run_ddl(&shared, c, j).await,
                }
            };
            // A cancelled job's future is dropped mid-flight: its connections go away with it
            // and the server rolls its transaction back.
            let result = tokio::select! {
                r = run => r,
                _ = shared.cancel.wait() => Err(Error::new(ErrorKind::Interrupted, "load job abandoned")),
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    // Never reuse connections after a failed job: the source side may have lost
                    // its snapshot transaction, the target side may be mid-COPY.
                    conns = None;
                    if e.is_retryable() && attempt < JOB_ATTEMPTS {
                        let wait = Duration::from_secs(1 << attempt.min(4));
                        tracing::warn!(
                            worker = id,
                            attempt,
                            retry_in_s = wait.as_secs(),
                            "{}",
                            e.message()
                        );
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        continue;
                    }
                    shared.stop();
                    return Err(e);
                }
            }
        }
        match &job {
            Job::Copy(j) => {
                let r = shared.scheduler.copy_done(j.table.oid);
                mark_ready(&shared, conns.as_ref(), &r.ready).await?;
            }
            Job::Ddl(j) => {
                shared.progress.ddl_finished();
                let r = shared.scheduler.ddl_done(&j.key, j.table, j.late);
                mark_ready(&shared, conns.as_ref(), &r.ready).await?;
            }
        }
    }
    Ok(())
}

pub(super) async fn mark_ready(
    shared: &Shared,
    conns: Option<&WorkerConns>,
    tables: &[u32],
) -> Result<()> {
    let Some(c) = conns else { return Ok(()) };
    for oid in tables {
        if let Some(n) = shared.names.get(oid) {
            state::set_table_state(
                &c.target,
                &shared.task.name,
                &n.schema,
                &n.name,
                TableState::Ready,
            )
            .await?;
        }
    }
    Ok(())
}

pub(super) async fn run_copy(shared: &Shared, c: &WorkerConns, job: &CopyJob) -> Result<()> {
    let t = &job.table;
    let started = Instant::now();
    let what = if t.chunks.len() > 1 {
        format!(
            "{} (chunk {} of {})",
            t.source,
            job.chunk + 1,
            t.chunks.len()
        )
    } else {
        t.source.to_string()
    };
    shared.progress.chunk_started(t.oid);
    let (mut moved_bytes, mut moved_rows) = (0u64, 0u64);
    let result: Result<bool> = async {
        c.target
            .batch_execute("BEGIN")
            .await
            .map_err(|e| classify(e, &format!("starting the load of {what}")))?;
        if job.freeze {
            c.target
                .batch_execute(&format!("TRUNCATE ONLY {}", t.target.quoted()))
                .await
                .map_err(|e| classify(e, &format!("emptying {} before its load", t.target)))?;
        }
        let stats = copy_stream::pipe(
            &c.source,
            &c.target,
            &sql_copy_out(t, &job.range),
            &sql_copy_in(t, job.freeze),
            t.format,
            &what,
            |b, r| {
                moved_bytes += b;
                moved_rows += r;
                shared.progress.add(t.oid, b, r);
            },
        )
        .await?;
        let last = state::chunk_done(
            &c.target,
            &shared.task.name,
            &state::ChunkDone {
                schema: &t.source.schema,
                table: &t.source.name,
                chunk: job.chunk,
                rows: stats.rows,
                bytes: stats.bytes,
                seconds: started.elapsed().as_secs_f64(),
            },
        )
        .await?;
        c.target
            .batch_execute("COMMIT")
            .await
            .map_err(|e| classify(e, &format!("committing {what}")))?;
        Ok(last)
    }
    .await;
    match result {
        Ok(last) => {
            pgtide_core::failpoint::hit("load-after-chunk");
            if let Some(tp) = shared.progress.chunk_ended(t.oid, true, 0, 0) {
                tracing::info!(
                    table = %t.source,
                    rows = tp.rows,
                    bytes = tp.bytes,
                    seconds = format!("{:.2}", tp.copy_time.unwrap_or_default().as_secs_f64()),
                    format = t.format.as_str(),
                    "table copied"
                );
            }
            let _ = last;
            Ok(())
        }
        Err(e) => {
            let _ = c.target.batch_execute("ROLLBACK").await;
            shared
                .progress
                .chunk_ended(t.oid, false, moved_bytes, moved_rows);
            Err(e)
        }
    }
}

pub(super) async fn run_ddl(shared: &Shared, c: &WorkerConns, job: &DdlJob) -> Result<()> {
    let started = Instant::now();
    let what = format!("building {} on the target", job.label);
    c.target
        .batch_execute("BEGIN")
        .await
        .map_err(|e| classify(e, &what))?;
    let result = async {
        c.target
            .batch_execute(&job.sql)
            .await
            .map_err(|e| classify(e, &what))?;
        state::step_done(
            &c.target,
            &shared.task.name,
            &job.key,
            started.elapsed().as_secs_f64(),
        )
        .await?;
        c.target
            .batch_execute("COMMIT")
            .await
            .map_err(|e| classify(e, &what))
    }
    .await;
    if result.is_err() {
        let _ = c.target.batch_execute("ROLLBACK").await;
    } else {
        tracing::debug!(job = %job.label, seconds = format!("{:.2}", started.elapsed().as_secs_f64()), "built");
    }
    result
}
