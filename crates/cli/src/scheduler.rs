//! Handing out the full load's work to workers, in an order that keeps every worker busy.
//!
//! Two kinds of job share one pool of workers:
//!
//! - **copy** jobs, one per chunk, largest tables first (a big table started last would leave
//!   one worker alone at the end), and preferably of a table no other worker is copying:
//!   concurrent COPYs into one table contend for its relation-extension lock (PostgreSQL 15
//!   and older scale badly there), while COPYs into different tables do not. Several workers
//!   share a table only when no other table has chunks left;
//! - **DDL** jobs (index, constraint, `ANALYZE`), each released as soon as what it needs is in:
//!   a table's indexes when its last chunk commits; *late* jobs (a foreign key, `ANALYZE`) when
//!   the tables they touch are *built*: copied, with every non-late DDL job done.
//!
//! Ready DDL jobs go before further copies, so index builds of finished tables overlap with the
//! copy of the rest instead of forming a long tail at the end. The scheduler is plain data
//! behind a mutex; workers call [`Scheduler::next`] and [`Scheduler::finish`]. It knows nothing
//! about databases, which keeps the ordering rules testable on their own.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::Notify;

/// What a DDL job waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DdlWait {
    /// The table's rows are all copied.
    Copied(u32),
    /// The table is copied and its non-late DDL jobs are done.
    Built(u32),
    /// The DDL job with this key is done (in this run or an earlier one).
    Job(String),
}

/// A unit of work, generic over what the worker needs to run it.
#[derive(Debug, Clone)]
pub enum Job<C, D> {
    /// Copy one chunk.
    Copy(C),
    /// Run one DDL job.
    Ddl(D),
}

struct Pending<D> {
    job: D,
    key: String,
    table: u32,
    late: bool,
    waits: Vec<DdlWait>,
}

struct Inner<C, D> {
    copies: VecDeque<(u32, C)>,
    ready: VecDeque<(String, u32, bool, D)>,
    waiting: Vec<Pending<D>>,
    chunks_left: HashMap<u32, usize>,
    /// Non-late DDL jobs not finished, per table.
    build_left: HashMap<u32, usize>,
    /// All DDL jobs not finished, per table.
    ddl_left: HashMap<u32, usize>,
    /// Keys of DDL jobs that are done.
    done: std::collections::HashSet<String>,
    /// Copy jobs running, per table.
    copying: HashMap<u32, usize>,
    running: usize,
    stopped: bool,
}

/// Events a worker reports back, for state updates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Released {
    /// Tables whose last chunk just finished.
    pub copied: Vec<u32>,
    /// Tables whose last DDL job just finished (and are copied).
    pub ready: Vec<u32>,
}

/// The shared work queue.
pub struct Scheduler<C, D> {
    inner: Mutex<Inner<C, D>>,
    changed: Notify,
}

impl<C, D> Scheduler<C, D> {
    /// Build from copy jobs (already ordered), DDL jobs with their key, table, late flag and
    /// waits, every table involved (tables with no chunk left count as copied), and the keys of
    /// DDL jobs finished by an earlier run.
    pub fn new(
        copies: Vec<(u32, C)>,
        ddl: Vec<(String, u32, bool, Vec<DdlWait>, D)>,
        tables: &[u32],
        done: std::collections::HashSet<String>,
    ) -> Self {
        let mut chunks_left: HashMap<u32, usize> = tables.iter().map(|t| (*t, 0)).collect();
        for (t, _) in &copies {
            *chunks_left.entry(*t).or_default() += 1;
        }
        let mut build_left: HashMap<u32, usize> = tables.iter().map(|t| (*t, 0)).collect();
        let mut ddl_left: HashMap<u32, usize> = tables.iter().map(|t| (*t, 0)).collect();
        let mut waiting = Vec::new();
        for (key, table, late, waits, job) in ddl {
            *ddl_left.entry(table).or_default() += 1;
            if !late {
                *build_left.entry(table).or_default() += 1;
            }
            waiting.push(Pending {
                job,
                key,
                table,
                late,
                waits,
            });
        }
        let mut inner = Inner {
            copies: copies.into_iter().collect(),
            ready: VecDeque::new(),
            waiting,
            chunks_left,
            build_left,
            ddl_left,
            done,
            copying: HashMap::new(),
            running: 0,
            stopped: false,
        };
        inner.release();
        Scheduler {
            inner: Mutex::new(inner),
            changed: Notify::new(),
        }
    }

    /// The next job, or `None` when everything is done or the run stopped.
    pub async fn next(&self) -> Option<Job<C, D>> {
        loop {
            let notified = self.changed.notified();
            {
                let mut g = self.inner.lock().expect("scheduler lock");
                if g.stopped {
                    return None;
                }
                let idle_table = g
                    .copies
                    .iter()
                    .position(|(t, _)| g.copying.get(t).copied().unwrap_or(0) == 0);
                if let Some((t, c)) = g.copies.remove(idle_table.unwrap_or(0)) {
                    g.running += 1;
                    *g.copying.entry(t).or_default() += 1;
                    return Some(Job::Copy(c));
                }
                if let Some((_, _, _, d)) = g.ready.pop_front() {
                    g.running += 1;
                    return Some(Job::Ddl(d));
                }
                if g.running == 0 {
                    // Nothing runs and nothing is ready: whatever still waits can never run.
                    g.stopped = true;
                    self.changed.notify_waiters();
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Report that a copy chunk of `table` finished.
    pub fn copy_done(&self, table: u32) -> Released {
        let mut g = self.inner.lock().expect("scheduler lock");
        g.running -= 1;
        if let Some(n) = g.copying.get_mut(&table) {
            *n = n.saturating_sub(1);
        }
        let mut out = Released::default();
        if let Some(n) = g.chunks_left.get_mut(&table) {
            *n -= 1;
            if *n == 0 {
                out.copied.push(table);
                if g.ddl_left.get(&table).copied().unwrap_or(0) == 0 {
                    out.ready.push(table);
                }
            }
        }
        g.release();
        drop(g);
        self.changed.notify_waiters();
        out
    }

    /// Report that the DDL job `key` of `table` finished.
    pub fn ddl_done(&self, key: &str, table: u32, late: bool) -> Released {
        let mut g = self.inner.lock().expect("scheduler lock");
        g.running -= 1;
        g.done.insert(key.to_string());
        let mut out = Released::default();
        if !late && let Some(n) = g.build_left.get_mut(&table) {
            *n -= 1;
        }
        if let Some(n) = g.ddl_left.get_mut(&table) {
            *n -= 1;
            if *n == 0 && g.chunks_left.get(&table).copied().unwrap_or(0) == 0 {
                out.ready.push(table);
            }
        }
        g.release();
        drop(g);
        self.changed.notify_waiters();
        out
    }

    /// Stop handing out work (after an error).
    pub fn stop(&self) {
        self.inner.lock().expect("scheduler lock").stopped = true;
        self.changed.notify_waiters();
    }

    /// Jobs that never became ready (non-empty only after a bug or a stop).
    pub fn stranded(&self) -> usize {
        let g = self.inner.lock().expect("scheduler lock");
        g.waiting.len() + g.copies.len() + g.ready.len()
    }

    /// Tables that are copied and built now (for resumed runs with nothing left to do).
    pub fn ready_now(&self, tables: &[u32]) -> Vec<u32> {
        let g = self.inner.lock().expect("scheduler lock");
        tables
            .iter()
            .copied()
            .filter(|t| g.chunks_left.get(t) == Some(&0) && g.ddl_left.get(t) == Some(&0))
            .collect()
    }
}

impl<C, D> Inner<C, D> {
    fn satisfied(&self, w: &DdlWait) -> bool {
        match w {
            // An unknown table never becomes ready: that is a planning bug, and the run ends
            // with the job stranded rather than running DDL against a table without its rows.
            DdlWait::Copied(t) => self.chunks_left.get(t) == Some(&0),
            DdlWait::Built(t) => {
                self.chunks_left.get(t) == Some(&0) && self.build_left.get(t) == Some(&0)
            }
            DdlWait::Job(k) => self.done.contains(k),
        }
    }

    fn release(&mut self) {
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].waits.iter().all(|w| self.satisfied(w)) {
                let p = self.waiting.swap_remove(i);
                self.ready.push_back((p.key, p.table, p.late, p.job));
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ddl_follows_copy_and_fk_waits_for_both_tables() {
        // Table 1: two chunks, one index; table 2: one chunk, one index, an FK to table 1.
        let s: Scheduler<&str, &str> = Scheduler::new(
            vec![(1, "c1a"), (1, "c1b"), (2, "c2")],
            vec![
                ("i1".into(), 1, false, vec![DdlWait::Copied(1)], "idx1"),
                ("i2".into(), 2, false, vec![DdlWait::Copied(2)], "idx2"),
                (
                    "f".into(),
                    2,
                    true,
                    vec![DdlWait::Built(2), DdlWait::Built(1)],
                    "fk21",
                ),
            ],
            &[1, 2],
            Default::default(),
        );
        let mut order = Vec::new();
        let mut in_flight: Vec<Job<&str, &str>> = Vec::new();
        // Take the three copies.
        for _ in 0..3 {
            in_flight.push(s.next().await.unwrap());
        }
        assert!(in_flight.iter().all(|j| matches!(j, Job::Copy(_))));
        // Finish table 2's chunk: its index becomes ready, the FK does not.
        let r = s.copy_done(2);
        assert_eq!(r.copied, vec![2]);
        match s.next().await.unwrap() {
            Job::Ddl(d) => order.push(d),
            _ => panic!(),
        }
        assert_eq!(order, vec!["idx2"]);
        s.ddl_done("i2", 2, false);
        s.copy_done(1);
        let r = s.copy_done(1);
        assert_eq!(r.copied, vec![1]);
        match s.next().await.unwrap() {
            Job::Ddl(d) => order.push(d),
            _ => panic!(),
        }
        let r = s.ddl_done("i1", 1, false);
        assert_eq!(r.ready, vec![1]);
        match s.next().await.unwrap() {
            Job::Ddl(d) => order.push(d),
            _ => panic!(),
        }
        let r = s.ddl_done("f", 2, true);
        assert_eq!(r.ready, vec![2]);
        assert_eq!(order, vec!["idx2", "idx1", "fk21"]);
        assert!(s.next().await.is_none());
        assert_eq!(s.stranded(), 0);
    }

    #[tokio::test]
    async fn workers_spread_over_tables_before_sharing_one() {
        let s: Scheduler<&str, &str> = Scheduler::new(
            vec![(1, "a0"), (1, "a1"), (1, "a2"), (2, "b0"), (2, "b1")],
            vec![],
            &[1, 2],
            Default::default(),
        );
        let mut got = Vec::new();
        for _ in 0..2 {
            match s.next().await.unwrap() {
                Job::Copy(c) => got.push(c),
                _ => panic!(),
            }
        }
        assert_eq!(
            got,
            vec!["a0", "b0"],
            "the second worker takes the other table"
        );
        s.copy_done(1);
        match s.next().await.unwrap() {
            Job::Copy(c) => assert_eq!(c, "a1"),
            _ => panic!(),
        }
        // Table 2 is still being copied, table 1 too: a third worker doubles up on the largest.
        match s.next().await.unwrap() {
            Job::Copy(c) => assert_eq!(c, "a2"),
            _ => panic!(),
        }
    }

    #[tokio::test]
    async fn unsatisfiable_jobs_end_the_run_instead_of_hanging() {
        let s: Scheduler<&str, &str> = Scheduler::new(
            vec![],
            vec![("k".into(), 1, true, vec![DdlWait::Copied(99)], "fk")],
            &[1],
            Default::default(),
        );
        assert!(s.next().await.is_none());
        assert_eq!(s.stranded(), 1);
    }

    #[tokio::test]
    async fn job_waits_follow_other_jobs_and_earlier_runs() {
        let s: Scheduler<&str, &str> = Scheduler::new(
            vec![],
            vec![
                (
                    "attach".into(),
                    1,
                    false,
                    vec![DdlWait::Job("parent".into()), DdlWait::Job("child".into())],
                    "attach",
                ),
                (
                    "parent".into(),
                    1,
                    false,
                    vec![DdlWait::Copied(1)],
                    "parent",
                ),
            ],
            &[1],
            ["child".to_string()].into_iter().collect(),
        );
        match s.next().await.unwrap() {
            Job::Ddl(d) => assert_eq!(d, "parent"),
            _ => panic!(),
        }
        s.ddl_done("parent", 1, false);
        match s.next().await.unwrap() {
            Job::Ddl(d) => assert_eq!(d, "attach"),
            _ => panic!(),
        }
        let r = s.ddl_done("attach", 1, false);
        assert_eq!(r.ready, vec![1]);
        assert!(s.next().await.is_none());
    }
}
