//! Per-table change buffers for one batch, and the compaction that makes applying them cheap.
//!
//! A batch is one target transaction, applied with triggers and foreign-key checks off
//! (`session_replication_role = replica`). Inside it, only the end state is ever visible, so:
//!
//! - changes to **different tables** are independent and can be applied table by table;
//! - changes to **one row** (one key) can be merged into a single operation:
//!
//! | pending \ next | insert r            | update p            | delete        |
//! |----------------|---------------------|---------------------|---------------|
//! | (none)         | insert r            | update p            | delete        |
//! | insert r0      | *error*             | insert r0 + p       | (nothing)     |
//! | update p0      | *error*             | update p0 + p       | delete        |
//! | delete         | replace r           | *error*             | *error*       |
//! | replace r0     | *error*             | replace r0 + p      | delete        |
//!
//! (`+ p` overwrites the columns the update set; unchanged TOASTed columns are not in `p`.)
//! After merging, every key has at most one operation, so a batch is applied as: all deletes
//! (and the delete half of replaces) in one statement, updates grouped by the set of columns
//! they change in one statement per group, then all inserts (and replace rows) in one COPY. The
//! property test below checks that this gives the same table as applying the changes one by one.
//!
//! This is only valid when the key is the table's only uniqueness rule: a set-based UPDATE that
//! swaps values of another unique column between two rows could collide halfway. Tables with
//! other immediate unique or exclusion constraints, or without a key, use [`Ordered`] buffers,
//! which keep the source's order row by row.

use bytes::Bytes;
use std::collections::BTreeMap;

/// The merge map hashes every change's key: foldhash (hashbrown's own default, already in the
/// dependency tree) instead of SipHash, seeded per process.
type HashMap<K, V> = foldhash::HashMap<K, V>;

/// Key column values, in key order, as text.
pub type Key = Vec<Option<Bytes>>;
/// A full row, every column, as text.
pub type Row = Vec<Option<Bytes>>;
/// An update's values per column: `None` leaves the column alone, `Some(v)` sets it.
pub type Patch = Vec<Option<Option<Bytes>>>;

/// One merged operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The row is new in this batch.
    Insert(Row),
    /// The row existed and some columns change.
    Update(Patch),
    /// The row existed and goes away.
    Delete,
    /// The row existed, went away, and a row with the same key came back.
    Replace(Row),
}

fn patch_row(row: &mut Row, patch: &Patch) {
    for (r, p) in row.iter_mut().zip(patch) {
        if let Some(v) = p {
            *r = v.clone();
        }
    }
}

fn patch_patch(a: &mut Patch, b: &Patch) {
    for (x, y) in a.iter_mut().zip(b) {
        if y.is_some() {
            *x = y.clone();
        }
    }
}

/// What a compacted buffer turns into.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Keys to delete (deletes and the first half of replaces).
    pub deletes: Vec<Key>,
    /// Updates grouped by which columns they set: for each group, (key, patch).
    pub updates: BTreeMap<Vec<bool>, Vec<(Key, Patch)>>,
    /// Rows to insert (inserts and the second half of replaces).
    pub inserts: Vec<Row>,
}

/// A buffer that merges changes per key.
#[derive(Debug, Default)]
pub struct Compacted {
    ops: HashMap<Key, Op>,
}

impl Compacted {
    /// Forget everything (after a TRUNCATE, buffered changes are moot).
    pub fn clear(&mut self) {
        self.ops.clear();
    }

    fn slot(&mut self, key: &Key) -> Option<&mut Op> {
        self.ops.get_mut(key)
    }

    /// An inserted row with key `key`.
    pub fn insert(&mut self, key: Key, row: Row) -> Result<(), &'static str> {
        match self.slot(&key) {
            None => {
                self.ops.insert(key, Op::Insert(row));
            }
            Some(op @ Op::Delete) => *op = Op::Replace(row),
            Some(_) => return Err("an insert of a key that already exists"),
        }
        Ok(())
    }

    /// An update of the row with key `key` (the key itself unchanged).
    pub fn update(&mut self, key: Key, patch: Patch) -> Result<(), &'static str> {
        match self.slot(&key) {
            None => {
                self.ops.insert(key, Op::Update(patch));
            }
            Some(Op::Insert(r)) | Some(Op::Replace(r)) => patch_row(r, &patch),
            Some(Op::Update(p)) => patch_patch(p, &patch),
            Some(Op::Delete) => return Err("an update of a row that was deleted"),
        }
        Ok(())
    }

    /// A delete of the row with key `key`.
    pub fn delete(&mut self, key: Key) -> Result<(), &'static str> {
        match self.slot(&key) {
            None => {
                self.ops.insert(key, Op::Delete);
            }
            Some(Op::Insert(_)) => {
                self.ops.remove(&key);
            }
            Some(op @ (Op::Update(_) | Op::Replace(_))) => *op = Op::Delete,
            Some(Op::Delete) => return Err("a delete of a row that was deleted"),
        }
        Ok(())
    }

    /// Empty the buffer into statements' worth of work, each list in key order (see
    /// [`key_order`]).
    pub fn drain(&mut self) -> Drained {
        let mut ops: Vec<(Key, Op)> = self.ops.drain().collect();
        sort_by_key_order(&mut ops);
        let mut d = Drained::default();
        // Updates of one table nearly always set the same columns: the previous update's
        // signature is reused instead of allocating one per update.
        let mut sig: Vec<bool> = Vec::new();
        for (key, op) in ops {
            match op {
                Op::Insert(r) => d.inserts.push(r),
                Op::Delete => d.deletes.push(key),
                Op::Replace(r) => {
                    d.deletes.push(key);
                    d.inserts.push(r);
                }
                Op::Update(p) => {
                    if !sig.iter().copied().eq(p.iter().map(Option::is_some)) {
                        sig = p.iter().map(Option::is_some).collect();
                    }
                    match d.updates.get_mut(&sig) {
                        Some(group) => group.push((key, p)),
                        None => {
                            d.updates.insert(sig.clone(), vec![(key, p)]);
                        }
                    }
                }
            }
        }
        d
    }
}

/// The order a batch's keys are applied in: per key column, NULL first, then shorter text
/// first, then bytes. For non-negative integers (no leading zeros) that is numeric order, for
/// dates chronological order, for uuids their byte order; negative numbers and timestamps of
/// different fractional lengths come out of order, which only costs locality. Close to the
/// order of the target's index on the key, so a set-based UPDATE or DELETE walks the index and
/// a table loaded in key order page after page instead of jumping around (with a cold cache, a
/// pgbench-shaped batch spent over half of the target's time finding rows in random order).
/// Any order is correct: after merging, a batch holds at most one operation per key.
pub fn key_order(a: &Key, b: &Key) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    for (x, y) in a.iter().zip(b) {
        let o = match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            // Equal lengths: the first eight bytes as one big-endian number order like the
            // bytes themselves, and settle most comparisons of short keys without a memcmp
            // call (memcmp was 8% of the stream thread's profile in a drain, from this sort
            // and the merge map's key comparisons).
            (Some(x), Some(y)) => x
                .len()
                .cmp(&y.len())
                .then_with(|| prefix(x).cmp(&prefix(y)))
                .then_with(|| x.cmp(y)),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

/// The first (up to) eight bytes of `v`, big-endian, zero-padded. Shorter values are
/// assembled byte by byte: a `copy_from_slice` of a variable length is a `memcpy` call, which
/// was 4% of the stream thread's time in a drain, called from this sort's comparisons.
fn prefix(v: &[u8]) -> u64 {
    match v.first_chunk::<8>() {
        Some(b) => u64::from_be_bytes(*b),
        None => v
            .iter()
            .enumerate()
            .fold(0, |acc, (i, &c)| acc | (u64::from(c) << (56 - 8 * i))),
    }
}

/// Sort `ops` by [`key_order`] of their keys. The first key column's rank (NULL, then length,
/// then the first eight bytes) is computed once per key into a compact array that is sorted
/// instead of the operations themselves: comparing keys in place follows two pointers per side
/// (the key's vector, then each value) and the sort moves whole `(Key, Op)` pairs around. Ties
/// on that rank (longer values with a common prefix, further key columns) are settled by
/// [`key_order`] itself, so the order is exactly `key_order`'s.
fn sort_by_key_order(ops: &mut Vec<(Key, Op)>) {
    let rank = |k: &Key| match k.first() {
        Some(Some(v)) => (1 + v.len() as u64, prefix(v)),
        _ => (0, 0),
    };
    let mut order: Vec<(u64, u64, usize)> = ops
        .iter()
        .enumerate()
        .map(|(i, (k, _))| {
            let (a, b) = rank(k);
            (a, b, i)
        })
        .collect();
    order.sort_unstable_by(|x, y| {
        (x.0, x.1)
            .cmp(&(y.0, y.1))
            .then_with(|| key_order(&ops[x.2].0, &ops[y.2].0))
    });
    let mut slots: Vec<Option<(Key, Op)>> = ops.drain(..).map(Some).collect();
    ops.extend(
        order
            .iter()
            .map(|&(_, _, i)| slots[i].take().expect("each operation is placed once")),
    );
}

/// One change kept in source order (tables that cannot be compacted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ordered {
    /// Insert a full row.
    Insert(Row),
    /// Update the row found by `key` (its key before the change), setting `patch`.
    Update {
        /// The key before the change.
        key: Key,
        /// Columns to set (key columns included when the key changes).
        patch: Patch,
    },
    /// Delete the row found by `key`.
    Delete {
        /// The key.
        key: Key,
    },
    /// Tables without a key: update one row equal to `old` (columns `None` are not compared).
    WholeRowUpdate {
        /// The old row.
        old: Patch,
        /// Columns to set.
        patch: Patch,
    },
    /// Tables without a key: delete one row equal to `old`.
    WholeRowDelete {
        /// The old row.
        old: Patch,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Map;

    fn b(v: i64) -> Option<Bytes> {
        Some(Bytes::from(v.to_string()))
    }

    #[test]
    fn keys_drain_in_index_like_order() {
        let mut buf = Compacted::default();
        for k in [10, 9, 100, 1, 25] {
            buf.update(vec![b(k)], vec![None, Some(b(k))]).unwrap();
        }
        buf.insert(vec![b(7)], vec![b(7), b(0)]).unwrap();
        buf.delete(vec![b(3)]).unwrap();
        buf.delete(vec![None]).unwrap();
        let d = buf.drain();
        let keys: Vec<Key> = d
            .updates
            .values()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(keys, [1, 9, 10, 25, 100].map(|k| vec![b(k)]));
        assert_eq!(d.deletes, vec![vec![None], vec![b(3)]]);
        assert_eq!(d.inserts, vec![vec![b(7), b(0)]]);
        assert_eq!(
            key_order(&vec![b(2), b(10)], &vec![b(2), b(9)]),
            std::cmp::Ordering::Greater
        );
    }

    #[derive(Debug, Clone)]
    enum Change {
        Insert(i64, i64, i64),
        Update(i64, Option<i64>, Option<i64>),
        Delete(i64),
    }

    /// Random change sequences that are valid against the table they start from.
    fn changes() -> impl Strategy<Value = (Map<i64, (i64, i64)>, Vec<Change>)> {
        let start = proptest::collection::btree_map(0i64..8, (0i64..100, 0i64..100), 0..6);
        (
            start,
            proptest::collection::vec(
                (
                    0u8..3,
                    0i64..8,
                    proptest::option::of(0i64..100),
                    proptest::option::of(0i64..100),
                ),
                0..40,
            ),
        )
            .prop_map(|(start, raw)| {
                let mut table = start.clone();
                let mut out = Vec::new();
                for (kind, k, a, bb) in raw {
                    match (kind, table.contains_key(&k)) {
                        (0, false) => {
                            let row = (a.unwrap_or(1), bb.unwrap_or(2));
                            table.insert(k, row);
                            out.push(Change::Insert(k, row.0, row.1));
                        }
                        (1, true) => {
                            let r = table.get_mut(&k).unwrap();
                            if let Some(a) = a {
                                r.0 = a;
                            }
                            if let Some(bb) = bb {
                                r.1 = bb;
                            }
                            out.push(Change::Update(k, a, bb));
                        }
                        (2, true) => {
                            table.remove(&k);
                            out.push(Change::Delete(k));
                        }
                        _ => {}
                    }
                }
                (start, out)
            })
    }

    fn apply_serially(start: &Map<i64, (i64, i64)>, changes: &[Change]) -> Map<i64, (i64, i64)> {
        let mut t = start.clone();
        for c in changes {
            match *c {
                Change::Insert(k, a, bb) => {
                    t.insert(k, (a, bb));
                }
                Change::Update(k, a, bb) => {
                    let r = t.get_mut(&k).unwrap();
                    if let Some(a) = a {
                        r.0 = a;
                    }
                    if let Some(bb) = bb {
                        r.1 = bb;
                    }
                }
                Change::Delete(k) => {
                    t.remove(&k);
                }
            }
        }
        t
    }

    fn parse(v: &Option<Bytes>) -> i64 {
        std::str::from_utf8(v.as_ref().unwrap())
            .unwrap()
            .parse()
            .unwrap()
    }

    proptest! {
        #[test]
        fn compacted_application_equals_serial_application((start, changes) in changes()) {
            let mut buf = Compacted::default();
            for c in &changes {
                match *c {
                    Change::Insert(k, a, bb) => buf.insert(vec![b(k)], vec![b(k), b(a), b(bb)]).unwrap(),
                    Change::Update(k, a, bb) => buf.update(vec![b(k)], vec![None, a.map(b), bb.map(b)]).unwrap(),
                    Change::Delete(k) => buf.delete(vec![b(k)]).unwrap(),
                }
            }
            let d = buf.drain();
            prop_assert!(buf.ops.is_empty());
            // Apply the way the applier does: deletes, then update groups, then inserts; every
            // delete and update must find its row, every insert must not.
            let mut t = start.clone();
            for key in &d.deletes {
                prop_assert!(t.remove(&parse(&key[0])).is_some(), "delete of a missing row");
            }
            let mut seen = std::collections::HashSet::new();
            for group in d.updates.values() {
                for (key, patch) in group {
                    let k = parse(&key[0]);
                    prop_assert!(seen.insert(k), "a key twice in the update groups");
                    let r = t.get_mut(&k);
                    prop_assert!(r.is_some(), "update of a missing row");
                    let r = r.unwrap();
                    if let Some(v) = &patch[1] { r.0 = parse(v); }
                    if let Some(v) = &patch[2] { r.1 = parse(v); }
                }
            }
            for row in &d.inserts {
                prop_assert!(t.insert(parse(&row[0]), (parse(&row[1]), parse(&row[2]))).is_none(), "insert of an existing row");
            }
            prop_assert_eq!(t, apply_serially(&start, &changes));
        }
    }

    proptest! {
        #[test]
        fn key_order_is_length_then_bytes(
            a in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)), 1..3),
            b in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)), 1..3),
        ) {
            // The reference: per column NULL first, then shorter first, then the bytes.
            let reference = a.iter().zip(&b).map(|(x, y)| match (x, y) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(_), None) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
            }).find(|o| o.is_ne()).unwrap_or_else(|| a.len().cmp(&b.len()));
            let key = |k: &Vec<Option<Vec<u8>>>| -> Key { k.iter().map(|v| v.clone().map(Bytes::from)).collect() };
            prop_assert_eq!(key_order(&key(&a), &key(&b)), reference);
        }

        #[test]
        fn operations_are_sorted_exactly_in_key_order(
            keys in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::option::of(proptest::collection::vec(0u8..4, 0..11)),
                    1..3,
                ),
                0..40,
            ),
        ) {
            let mut ops: Vec<(Key, Op)> = keys
                .iter()
                .map(|k| (k.iter().map(|v| v.clone().map(Bytes::from)).collect(), Op::Delete))
                .collect();
            let mut reference = ops.clone();
            reference.sort_by(|x, y| key_order(&x.0, &y.0));
            sort_by_key_order(&mut ops);
            let sorted: Vec<&Key> = ops.iter().map(|o| &o.0).collect();
            prop_assert_eq!(sorted, reference.iter().map(|o| &o.0).collect::<Vec<_>>());
        }
    }

    #[test]
    fn updates_are_grouped_by_the_columns_they_set() {
        let mut buf = Compacted::default();
        buf.update(vec![b(1)], vec![None, Some(b(1)), Some(b(1))])
            .unwrap();
        buf.update(vec![b(2)], vec![None, Some(b(2)), None])
            .unwrap();
        buf.update(vec![b(3)], vec![None, Some(b(3)), Some(b(3))])
            .unwrap();
        buf.update(vec![b(4)], vec![None, None, Some(b(4))])
            .unwrap();
        let d = buf.drain();
        let groups: Vec<(Vec<bool>, Vec<Key>)> = d
            .updates
            .into_iter()
            .map(|(sig, g)| (sig, g.into_iter().map(|(k, _)| k).collect()))
            .collect();
        assert_eq!(
            groups,
            vec![
                (vec![false, false, true], vec![vec![b(4)]]),
                (vec![false, true, false], vec![vec![b(2)]]),
                (vec![false, true, true], vec![vec![b(1)], vec![b(3)]]),
            ]
        );
    }

    #[test]
    fn impossible_sequences_are_reported() {
        let mut buf = Compacted::default();
        buf.insert(vec![b(1)], vec![b(1)]).unwrap();
        assert!(buf.insert(vec![b(1)], vec![b(1)]).is_err());
        buf.delete(vec![b(2)]).unwrap();
        assert!(buf.update(vec![b(2)], vec![None]).is_err());
        assert!(buf.delete(vec![b(2)]).is_err());
    }
}
