//! Selection settings and transformation rules, end to end on real servers: the full load and
//! change data capture give the same result (column lists, row conditions with rows moving into
//! and out of them, renames of schemas, tables and columns, removed and retyped columns,
//! partitions, case-sensitive names), a DMS table-mapping document gives exactly what the same
//! rules written natively give, and bad rules stop at plan time naming the rule.

mod common;
use common::*;
use pgtide_testkit::PgServer;

const SCHEMA: &str = r#"
CREATE SCHEMA sales;
CREATE TABLE sales.orders (
    id int PRIMARY KEY, customer text NOT NULL, status text NOT NULL,
    amount numeric(10,2), note text, secret text, created date, legacy_no serial);
COMMENT ON COLUMN sales.orders.secret IS 'personal data';
CREATE INDEX orders_secret_idx ON sales.orders (secret);
CREATE INDEX orders_customer_idx ON sales.orders (customer);
CREATE VIEW sales.order_secrets AS SELECT id, secret FROM sales.orders;
CREATE VIEW sales.order_amounts AS SELECT id, amount FROM sales.orders;
ALTER TABLE sales.orders REPLICA IDENTITY FULL;
INSERT INTO sales.orders (id, customer, status, amount, note, secret, created)
  SELECT g, 'c' || (g % 17), CASE WHEN g % 5 = 0 THEN 'void' ELSE 'open' END,
         g * 1.25, 'note ' || g, 'secret ' || g, date '2024-01-01' + g
  FROM generate_series(1, 3000) g;
CREATE TABLE public."Table1" (id int PRIMARY KEY, v text);
CREATE TABLE public."TABLE1" (id int PRIMARY KEY, v text);
CREATE TABLE public.table1 (id int PRIMARY KEY, v text);
INSERT INTO public."Table1" VALUES (1, 'mixed');
INSERT INTO public."TABLE1" VALUES (1, 'upper');
INSERT INTO public.table1 VALUES (1, 'lower');
CREATE TABLE public.events (id int PRIMARY KEY, kind text, payload text, internal text) PARTITION BY RANGE (id);
CREATE TABLE public.events_a PARTITION OF public.events FOR VALUES FROM (0) TO (1000);
CREATE TABLE public.events_b PARTITION OF public.events FOR VALUES FROM (1000) TO (100000);
INSERT INTO public.events SELECT g, 'k' || (g % 3), repeat('p', g % 50), 'internal' FROM generate_series(1, 2000) g;
"#;

/// The rules, written natively.
const NATIVE: &str = r#"
tables:
  include: ["sales.*", 'public."Table1"', public.table1, public.events]
  settings:
    - table: sales.orders
      columns: { exclude: [secret, legacy_no] }
      where: "status <> 'void'"
      split_key: id
      chunks: 3
    - table: public.events
      where: "id >= 4"
      columns: { exclude: [internal] }
transform:
  - { schema: sales, rename: crm }
  - { table: sales.orders, rename: purchase_orders }
  - { column: sales.orders.note, rename: remark }
  - { column: sales.orders.amount, type: "numeric(14,2)" }
  - { table: 'public."Table1"', add_suffix: _Mixed }
  - { column: public.events.payload, rename: body }
"#;

/// The same rules as an AWS DMS table-mapping document.
const DMS: &str = r#"{"rules": [
  {"rule-type": "selection", "rule-id": "1", "rule-name": "sales", "object-locator": {"schema-name": "sales", "table-name": "%"}, "rule-action": "include",
   "filters": []},
  {"rule-type": "selection", "rule-id": "2", "rule-name": "orders", "object-locator": {"schema-name": "sales", "table-name": "orders"}, "rule-action": "include",
   "filters": [{"filter-type": "source", "column-name": "status", "filter-conditions": [{"filter-operator": "noteq", "value": "void"}]}]},
  {"rule-type": "selection", "rule-id": "3", "rule-name": "Table1", "object-locator": {"schema-name": "public", "table-name": "Table1"}, "rule-action": "include"},
  {"rule-type": "selection", "rule-id": "4", "rule-name": "table1", "object-locator": {"schema-name": "public", "table-name": "table1"}, "rule-action": "include"},
  {"rule-type": "selection", "rule-id": "5", "rule-name": "events", "object-locator": {"schema-name": "public", "table-name": "events"}, "rule-action": "include",
   "filters": [{"filter-type": "source", "column-name": "id", "filter-conditions": [{"filter-operator": "gte", "value": "4"}]}]},
  {"rule-type": "transformation", "rule-id": "6", "rule-name": "6", "rule-target": "schema", "object-locator": {"schema-name": "sales"}, "rule-action": "rename", "value": "crm"},
  {"rule-type": "transformation", "rule-id": "7", "rule-name": "7", "rule-target": "table", "object-locator": {"schema-name": "sales", "table-name": "orders"}, "rule-action": "rename", "value": "purchase_orders"},
  {"rule-type": "transformation", "rule-id": "8", "rule-name": "8", "rule-target": "column", "object-locator": {"schema-name": "sales", "table-name": "orders", "column-name": "note"}, "rule-action": "rename", "value": "remark"},
  {"rule-type": "transformation", "rule-id": "9", "rule-name": "9", "rule-target": "column", "object-locator": {"schema-name": "sales", "table-name": "orders", "column-name": "amount"}, "rule-action": "change-data-type", "data-type": {"type": "numeric", "precision": 14, "scale": 2}},
  {"rule-type": "transformation", "rule-id": "10", "rule-name": "10", "rule-target": "column", "object-locator": {"schema-name": "sales", "table-name": "orders", "column-name": "secret"}, "rule-action": "remove-column"},
  {"rule-type": "transformation", "rule-id": "11", "rule-name": "11", "rule-target": "table", "object-locator": {"schema-name": "public", "table-name": "Table1"}, "rule-action": "add-suffix", "value": "_Mixed"},
  {"rule-type": "transformation", "rule-id": "14", "rule-name": "14", "rule-target": "column", "object-locator": {"schema-name": "sales", "table-name": "orders", "column-name": "legacy_no"}, "rule-action": "remove-column"},
  {"rule-type": "transformation", "rule-id": "13", "rule-name": "13", "rule-target": "column", "object-locator": {"schema-name": "public", "table-name": "events", "column-name": "internal"}, "rule-action": "remove-column"},
  {"rule-type": "transformation", "rule-id": "12", "rule-name": "12", "rule-target": "column", "object-locator": {"schema-name": "public", "table-name": "events", "column-name": "payload"}, "rule-action": "rename", "value": "body"}
]}"#;

fn servers() -> (PgServer, PgServer, tempfile::TempDir) {
    let Pair { source, target } = Pair::start();
    source.create_database("src").unwrap();
    source.psql("src", SCHEMA).unwrap();
    (source, target, tempfile::tempdir().unwrap())
}

/// Run the CDC task until everything committed on the source so far is applied.
fn run_to_now(source: &PgServer, task: &std::path::Path) -> String {
    let end = current_lsn(source, "src");
    run_ok_args(&["run", task.to_str().unwrap(), "--end-lsn", &end])
}

/// What the target must hold, computed on the source with the rules applied by hand.
const EXPECTED_ORDERS: &str = "SELECT id, customer, status, amount::numeric(14,2), note, created FROM sales.orders WHERE status <> 'void' ORDER BY id";
const TARGET_ORDERS: &str =
    "SELECT id, customer, status, amount, remark, created FROM crm.purchase_orders ORDER BY id";
const EXPECTED_EVENTS: &str =
    "SELECT id, kind, payload FROM public.events WHERE id >= 4 ORDER BY id";
const TARGET_EVENTS: &str = "SELECT id, kind, body FROM public.events ORDER BY id";

fn assert_target_matches(source: &PgServer, target: &PgServer, db: &str) {
    let want = source.psql("src", EXPECTED_ORDERS).unwrap();
    let got = target.psql(db, TARGET_ORDERS).unwrap();
    assert!(!want.is_empty());
    assert!(
        want == got,
        "crm.purchase_orders differs from the filtered source"
    );
    let want = source.psql("src", EXPECTED_EVENTS).unwrap();
    let got = target.psql(db, TARGET_EVENTS).unwrap();
    assert!(
        want == got,
        "public.events differs from the filtered source"
    );
    for (src, dst) in [
        ("public.\"Table1\"", "public.\"Table1_Mixed\""),
        ("public.table1", "public.table1"),
    ] {
        assert_eq!(
            source
                .psql("src", &format!("SELECT * FROM {src} ORDER BY id"))
                .unwrap(),
            target
                .psql(db, &format!("SELECT * FROM {dst} ORDER BY id"))
                .unwrap(),
            "{dst}"
        );
    }
}

fn assert_target_shape(target: &PgServer, db: &str) {
    let q = |sql: &str| target.psql(db, sql).unwrap();
    // Renamed, moved, retyped; the removed column and what used it are not there.
    assert_eq!(
        q(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) FROM pg_attribute \
           WHERE attrelid = 'crm.purchase_orders'::regclass AND attnum > 0 AND NOT attisdropped"
        ),
        "id integer, customer text, status text, amount numeric(14,2), remark text, created date"
    );
    assert_eq!(q("SELECT to_regclass('sales.orders') IS NULL"), "t");
    assert_eq!(q("SELECT to_regclass('sales.order_secrets') IS NULL"), "t");
    assert_eq!(
        q("SELECT to_regclass('crm.orders_secret_idx') IS NULL"),
        "t"
    );
    assert_eq!(
        q("SELECT to_regclass('crm.orders_customer_idx') IS NOT NULL"),
        "t"
    );
    assert_eq!(q("SELECT to_regclass('crm.orders_pkey') IS NOT NULL"), "t");
    // The view that survives follows the table to its new name and type.
    assert_eq!(
        q("SELECT count(*) FROM sales.order_amounts"),
        q("SELECT count(*) FROM crm.purchase_orders")
    );
    // Case-sensitive names: "TABLE1" was not selected, "Table1" got its suffix, table1 kept.
    assert_eq!(q("SELECT to_regclass('public.\"TABLE1\"') IS NULL"), "t");
    assert_eq!(q("SELECT to_regclass('public.\"Table1\"') IS NULL"), "t");
    assert_eq!(
        q(
            "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'public.events_b'::regclass AND attnum > 0 AND NOT attisdropped"
        ),
        "id,kind,body"
    );
}

#[test]
fn rules_apply_the_same_in_the_full_load_and_in_cdc() {
    let (source, target, dir) = servers();
    target.create_database("dst").unwrap();
    let yaml = task_yaml("rl", &source.url("src"), &target.url("dst"), NATIVE)
        .replace("mode: full-load\n", "mode: full-load-and-cdc\n");
    let task = task_file(dir.path(), "rl", &yaml);

    // The plan shows the resolved mapping before anything moves.
    let plan = run_ok_args(&["plan", task.to_str().unwrap()]);
    for needle in [
        "sales.orders -> crm.purchase_orders",
        "note -> remark",
        "amount (type numeric(14,2))",
        "removed columns: secret, legacy_no",
        "rows where: status <> 'void'   [tables.settings[0]]",
        "key ranges on id (3 chunks)",
        "public.\"Table1\" -> public.\"Table1_Mixed\"",
        "payload -> body",
    ] {
        assert!(
            plan.contains(needle),
            "missing {needle:?} in the plan:\n{plan}"
        );
    }
    assert!(!plan.contains("TABLE1"), "{plan}");

    // Full load, then stream to the current position.
    run_to_now(&source, &task);
    assert_target_shape(&target, "dst");
    assert_target_matches(&source, &target, "dst");
    assert_eq!(
        source
            .psql("src", "SELECT pg_get_expr(prqual, prrelid) FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid WHERE p.pubname = 'pgtide_rl' AND prrelid = 'public.events_a'::regclass")
            .unwrap(),
        "(id >= 4)"
    );
    // The removed column never leaves the source: the publication's column list omits it.
    assert_eq!(
        source
            .psql("src", "SELECT attnames::text FROM pg_publication_tables WHERE pubname = 'pgtide_rl' AND tablename = 'events_b'")
            .unwrap(),
        "{id,kind,payload}"
    );

    // Changes: rows moving into and out of the conditions, renamed and removed columns,
    // a key update that crosses the condition and a partition boundary.
    source
        .psql(
            "src",
            "INSERT INTO sales.orders VALUES (5001, 'new', 'open', 10.5, 'fresh', 's', '2025-01-01'), \
                                          (5002, 'new', 'void', 11.5, 'voided', 's', '2025-01-01'); \
             UPDATE sales.orders SET status = 'void' WHERE id IN (1, 2, 3); \
             UPDATE sales.orders SET status = 'open', note = 'back' WHERE id IN (5, 10, 5002); \
             UPDATE sales.orders SET note = 'renamed column' WHERE id = 7; \
             UPDATE sales.orders SET secret = 'never leaves' WHERE id = 8; \
             UPDATE sales.orders SET amount = amount + 1000 WHERE id % 7 = 0; \
             DELETE FROM sales.orders WHERE id IN (4, 15); \
             INSERT INTO public.events VALUES (0, 'x', 'below'), (3000, 'y', 'above'); \
             UPDATE public.events SET id = 5000 WHERE id = 1; \
             DELETE FROM public.events WHERE id = 3; UPDATE public.events SET id = 3 WHERE id = 999; \
             UPDATE public.events SET payload = 'changed' WHERE id BETWEEN 10 AND 20; \
             UPDATE public.events SET internal = 'secret' WHERE id BETWEEN 30 AND 40; \
             INSERT INTO public.\"Table1\" VALUES (2, 'more'); INSERT INTO public.\"TABLE1\" VALUES (2, 'not moved'); \
             INSERT INTO public.table1 VALUES (2, 'more')",
        )
        .unwrap();
    let out = run_to_now(&source, &task);
    assert!(out.contains("stopped at end LSN"), "{out}");
    assert_target_matches(&source, &target, "dst");
    assert_eq!(
        target
            .psql(
                "dst",
                "SELECT remark FROM crm.purchase_orders WHERE id = 5002"
            )
            .unwrap(),
        "back"
    );
    assert_eq!(
        target
            .psql(
                "dst",
                "SELECT count(*) FROM public.events WHERE id IN (5000, 3)"
            )
            .unwrap(),
        "1"
    );
}

#[test]
fn a_dms_table_mapping_gives_what_the_native_rules_give() {
    let (source, target, dir) = servers();
    target.create_database("native").unwrap();
    target.create_database("dms").unwrap();
    std::fs::write(dir.path().join("mapping.json"), DMS).unwrap();
    let native = task_file(
        dir.path(),
        "nat",
        &task_yaml("nat", &source.url("src"), &target.url("native"), NATIVE),
    );
    let dms = task_file(
        dir.path(),
        "dms",
        &task_yaml(
            "dms",
            &source.url("src"),
            &target.url("dms"),
            "dms_table_mapping: mapping.json\n",
        ),
    );
    run_ok(&native);
    run_ok(&dms);
    assert_target_shape(&target, "native");
    assert_target_shape(&target, "dms");
    assert_target_matches(&source, &target, "native");
    assert_target_matches(&source, &target, "dms");
    // Every user table and column, byte for byte.
    let everything = "SELECT string_agg(format('%s.%s(%s)', n.nspname, c.relname, \
         (SELECT string_agg(attname || ':' || format_type(atttypid, atttypmod), ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped)), ' ' ORDER BY n.nspname, c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname IN ('public', 'sales', 'crm') AND c.relkind IN ('r', 'p', 'v', 'i')";
    assert_eq!(
        target.psql("native", everything).unwrap(),
        target.psql("dms", everything).unwrap()
    );
}

#[test]
fn bad_rules_stop_at_plan_time_naming_the_rule() {
    let (source, target, dir) = servers();
    target.create_database("dst").unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "c1",
            "tables:\n  settings:\n    - { table: sales.orders, where: \"status <> \" }\n",
            &["tables.settings[0]", "not accepted by the source"],
        ),
        (
            "c2",
            "tables:\n  settings:\n    - { table: sales.orders, where: \"nope > 1\" }\n",
            &["tables.settings[0]", "nope"],
        ),
        (
            "c3",
            "transform:\n  - { table: public.table1, rename: '\"Table1\"' }\n",
            &["same target table", "public.table1"],
        ),
        (
            "c4",
            "transform:\n  - { table: \"sales.*\", rename: a }\n  - { table: sales.orders, rename: b }\n",
            &["transform[0]", "transform[1]", "contradict"],
        ),
        (
            "c5",
            "transform:\n  - { table: public.nothing_here, rename: a }\n",
            &["transform[0]", "matches no selected table"],
        ),
        (
            "c6",
            "tables:\n  settings:\n    - { table: sales.orders, columns: { include: [id, missing] } }\n",
            &["tables.settings[0]", "missing", "customer"],
        ),
    ];
    for (name, rules, needles) in cases {
        let task = task_file(
            dir.path(),
            name,
            &task_yaml(name, &source.url("src"), &target.url("dst"), rules),
        );
        let (code, err) = run_err_args(&["plan", task.to_str().unwrap()]);
        assert_ne!(code, 0);
        for n in *needles {
            assert!(err.contains(n), "{name}: missing {n:?} in:\n{err}");
        }
        // And `run` stops before anything is written.
        run_err(&task);
        assert_eq!(
            target
                .psql("dst", "SELECT count(*) FROM pg_tables WHERE schemaname <> 'pg_catalog' AND schemaname <> 'information_schema'")
                .unwrap(),
            "0",
            "{name}: something was written"
        );
    }

    // In CDC, a condition on a column outside the replica identity would break the source's
    // UPDATEs: refused with the fix.
    source
        .psql("src", "ALTER TABLE sales.orders REPLICA IDENTITY DEFAULT")
        .unwrap();
    let yaml = task_yaml(
        "c7",
        &source.url("src"),
        &target.url("dst"),
        "tables:\n  include: [sales.orders]\n  settings:\n    - { table: sales.orders, where: \"status <> 'void'\" }\n",
    )
    .replace("mode: full-load\n", "mode: cdc\n");
    let task = task_file(dir.path(), "c7", &yaml);
    let (_, err) = run_err(&task);
    for n in [
        "tables.settings[0]",
        "status",
        "replica identity",
        "REPLICA IDENTITY FULL",
    ] {
        assert!(err.contains(n), "missing {n:?} in:\n{err}");
    }
    assert_eq!(
        source
            .psql("src", "SELECT count(*) FROM pg_publication")
            .unwrap(),
        "0"
    );
    // The source's application keeps working.
    source
        .psql("src", "UPDATE sales.orders SET status = 'x' WHERE id = 1")
        .unwrap();
}

#[test]
fn a_row_identifier_key_applies_updates_and_deletes_of_a_table_without_a_key() {
    let (source, target, dir) = servers();
    target.create_database("dst").unwrap();
    source
        .psql(
            "src",
            "CREATE TABLE public.lines (order_id int NOT NULL, line_no int NOT NULL, qty int, doc json); \
             ALTER TABLE public.lines REPLICA IDENTITY FULL; \
             INSERT INTO public.lines SELECT g / 10, g % 10, g, json_build_object('g', g) FROM generate_series(1, 500) g;",
        )
        .unwrap();
    let yaml = task_yaml(
        "rk",
        &source.url("src"),
        &target.url("dst"),
        "tables:\n  include: [public.lines]\n  settings:\n    - { table: public.lines, row_identifier_key: [order_id, line_no] }\n",
    )
    .replace("mode: full-load\n", "mode: full-load-and-cdc\n");
    let task = task_file(dir.path(), "rk", &yaml);
    let plan = run_ok_args(&["plan", task.to_str().unwrap()]);
    assert!(
        plan.contains("row identifier key: (order_id, line_no)   [tables.settings[0]]"),
        "{plan}"
    );
    run_to_now(&source, &task);
    source
        .psql(
            "src",
            "UPDATE public.lines SET qty = qty * 2, doc = '{\"changed\": true}' WHERE order_id = 3; \
             UPDATE public.lines SET line_no = line_no + 100 WHERE order_id = 4; \
             DELETE FROM public.lines WHERE order_id = 5; \
             INSERT INTO public.lines VALUES (99, 1, 1, NULL)",
        )
        .unwrap();
    run_to_now(&source, &task);
    let q = "SELECT order_id, line_no, qty, doc::text FROM public.lines ORDER BY 1, 2";
    assert_eq!(
        source.psql("src", q).unwrap(),
        target.psql("dst", q).unwrap()
    );
}

#[test]
fn existing_targets_take_column_lists_name_actions_and_per_table_preparation() {
    let Pair { source, target } = Pair::start();
    let dir = tempfile::tempdir().unwrap();
    source.create_database("src").unwrap();
    target.create_database("dst").unwrap();
    source
        .psql(
            "src",
            "CREATE TABLE public.a (id int PRIMARY KEY, v text, w text); \
             CREATE TABLE public.\"Mixed\" (id int PRIMARY KEY, v text); \
             CREATE TABLE public.tbl_old (id int PRIMARY KEY, v text); \
             INSERT INTO public.a SELECT g, 'v' || g, 'w' || g FROM generate_series(1, 100) g; \
             INSERT INTO public.\"Mixed\" VALUES (1, 'm'); INSERT INTO public.tbl_old VALUES (1, 'o');",
        )
        .unwrap();
    // The target tables exist with the final names: x_a gets only (id, "V"), keeps its own w;
    // mixed is emptied first (truncate); x_a must be empty (do-nothing).
    target
        .psql(
            "dst",
            "CREATE TABLE public.x_a (id int PRIMARY KEY, \"V\" text, w text DEFAULT 'target'); \
             CREATE TABLE public.mixed (id int PRIMARY KEY, v text); INSERT INTO public.mixed VALUES (9, 'stale'); \
             CREATE TABLE public.t_old (id int PRIMARY KEY, v text);",
        )
        .unwrap();
    let rules = [
        "full_load: { table_preparation: truncate }",
        "tables:",
        "  settings:",
        "    - { table: public.a, columns: { include: [id, v] }, preparation: do-nothing }",
        "transform:",
        "  - { table: \"public.tbl_*\", replace_prefix: { from: tbl_, to: t_ } }",
        "  - { table: 'public.\"Mixed\"', case: lower }",
        "  - { table: public.a, add_prefix: x_ }",
        "  - { column: public.a.v, case: upper }",
        "",
    ]
    .join("\n");
    let rules = rules.as_str();
    let task = task_file(
        dir.path(),
        "ex",
        &task_yaml("ex", &source.url("src"), &target.url("dst"), rules),
    );
    let plan = run_ok_args(&["plan", task.to_str().unwrap()]);
    for needle in [
        "public.a -> public.x_a",
        "v -> \"V\"",
        "removed columns: w",
        "target preparation: do-nothing",
        "public.\"Mixed\" -> public.mixed",
        "public.tbl_old -> public.t_old",
    ] {
        assert!(plan.contains(needle), "missing {needle:?} in:\n{plan}");
    }
    run_ok(&task);
    let q = |sql: &str| target.psql("dst", sql).unwrap();
    assert_eq!(
        q(
            "SELECT count(*), count(*) FILTER (WHERE \"V\" = 'v' || id AND w = 'target') FROM public.x_a"
        ),
        "100|100"
    );
    assert_eq!(q("SELECT string_agg(id || v, ',') FROM public.mixed"), "1m");
    assert_eq!(q("SELECT string_agg(id || v, ',') FROM public.t_old"), "1o");
    // do-nothing refuses a target that already holds rows.
    let (_, err) = run_err(&task);
    assert!(err.contains("public.x_a"), "{err}");
}

#[test]
fn a_partition_selected_by_name_moves_alone_under_its_partitioned_table() {
    let (source, target, dir) = servers();
    target.create_database("dst").unwrap();
    let yaml = task_yaml(
        "pl",
        &source.url("src"),
        &target.url("dst"),
        "tables: { include: [public.events_b] }\n",
    )
    .replace("mode: full-load\n", "mode: full-load-and-cdc\n");
    let task = task_file(dir.path(), "pl", &yaml);
    let plan = run_ok_args(&["plan", task.to_str().unwrap()]);
    assert!(
        plan.contains("public.events is created on the target for the partitions selected by name"),
        "{plan}"
    );
    run_to_now(&source, &task);
    source
        .psql(
            "src",
            "INSERT INTO public.events VALUES (0, 'a', 'to events_a'), (7000, 'b', 'to events_b'); \
             UPDATE public.events SET kind = 'changed' WHERE id BETWEEN 1500 AND 1510",
        )
        .unwrap();
    run_to_now(&source, &task);
    let q = "SELECT id, kind, payload, internal FROM public.events_b ORDER BY id";
    assert_eq!(
        source.psql("src", q).unwrap(),
        target.psql("dst", q).unwrap()
    );
    assert_eq!(
        target
            .psql(
                "dst",
                "SELECT to_regclass('public.events_a') IS NULL, count(*) FROM public.events"
            )
            .unwrap(),
        format!(
            "t|{}",
            source
                .psql("src", "SELECT count(*) FROM public.events_b")
                .unwrap()
        )
    );
}

#[test]
fn views_are_copied_as_tables_in_a_full_load() {
    let (source, target, dir) = servers();
    target.create_database("dst").unwrap();
    target.create_database("dms").unwrap();
    source
        .psql(
            "src",
            "CREATE TYPE public.mood AS ENUM ('sad', 'happy'); \
             CREATE VIEW public.\"Order Report\" AS SELECT o.id, o.amount * 2 AS doubled, \
                 CASE WHEN o.id % 2 = 0 THEN 'happy'::public.mood ELSE 'sad' END AS mood, o.created \
               FROM sales.orders o WHERE o.status = 'open'; \
             CREATE VIEW public.report_top AS SELECT * FROM public.\"Order Report\" WHERE id < 10; \
             CREATE MATERIALIZED VIEW public.kinds AS SELECT kind, count(*) AS n FROM public.events GROUP BY kind;",
        )
        .unwrap();
    let rules =
        "tables:\n  include: [public.table1]\n  views: ['public.\"Order Report\"', public.kinds]\n";
    let task = task_file(
        dir.path(),
        "vw",
        &task_yaml("vw", &source.url("src"), &target.url("dst"), rules),
    );
    let plan = run_ok_args(&["plan", task.to_str().unwrap()]);
    assert!(
        plan.contains("public.\"Order Report\" (view) -> public.\"Order Report\" (table)"),
        "{plan}"
    );
    assert!(
        plan.contains("view public.report_top is not created on the target: it reads public.\"Order Report\", which is copied as a table"),
        "{plan}"
    );
    run_ok(&task);
    let q = "SELECT * FROM public.\"Order Report\" ORDER BY id";
    let want = source.psql("src", q).unwrap();
    assert!(!want.is_empty());
    assert_eq!(want, target.psql("dst", q).unwrap());
    let q = "SELECT * FROM public.kinds ORDER BY kind";
    assert_eq!(
        source.psql("src", q).unwrap(),
        target.psql("dst", q).unwrap()
    );
    assert_eq!(
        target
            .psql("dst", "SELECT string_agg(relkind::text, ',' ORDER BY relname) FROM pg_class WHERE relname IN ('Order Report', 'kinds')")
            .unwrap(),
        "r,r"
    );
    assert_eq!(
        target
            .psql("dst", "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.\"Order Report\"'::regclass AND attname = 'mood'")
            .unwrap(),
        "mood"
    );
    let out = run_ok_args(&["validate", task.to_str().unwrap()]);
    assert!(out.contains("3/3 tables equal"), "{out}");

    // The same through a DMS selection with table-type view.
    std::fs::write(
        dir.path().join("views.json"),
        r#"{"rules": [
          {"rule-type": "selection", "rule-id": "1", "rule-name": "t", "object-locator": {"schema-name": "public", "table-name": "table1"}, "rule-action": "include"},
          {"rule-type": "selection", "rule-id": "2", "rule-name": "v", "object-locator": {"schema-name": "public", "table-name": "Order Report", "table-type": "view"}, "rule-action": "include"},
          {"rule-type": "selection", "rule-id": "3", "rule-name": "m", "object-locator": {"schema-name": "public", "table-name": "kinds", "table-type": "view"}, "rule-action": "include"}
        ]}"#,
    )
    .unwrap();
    let dms = task_file(
        dir.path(),
        "vd",
        &task_yaml(
            "vd",
            &source.url("src"),
            &target.url("dms"),
            "dms_table_mapping: views.json\n",
        ),
    );
    run_ok(&dms);
    let q = "SELECT * FROM public.\"Order Report\" ORDER BY id";
    assert_eq!(
        target.psql("dst", q).unwrap(),
        target.psql("dms", q).unwrap()
    );

    // A view has no changes to stream: refused in CDC modes, naming it.
    let cdc = task_file(
        dir.path(),
        "vc",
        &task_yaml("vc", &source.url("src"), &target.url("dst"), rules)
            .replace("mode: full-load\n", "mode: full-load-and-cdc\n"),
    );
    let (_, err) = run_err(&cdc);
    assert!(
        err.contains("no changes to stream") && err.contains("public.\"Order Report\""),
        "{err}"
    );
}

#[test]
fn renames_that_chain_and_excluded_roots_and_view_only_dms_selections() {
    let (source, target, dir) = servers();
    target.create_database("dst").unwrap();
    source
        .psql(
            "src",
            "CREATE TABLE public.chain (id int PRIMARY KEY, v text); \
             CREATE TABLE public.chain_v2 (id int PRIMARY KEY, v text); \
             INSERT INTO public.chain VALUES (1, 'first'); INSERT INTO public.chain_v2 VALUES (2, 'second');",
        )
        .unwrap();
    // `chain` becomes `chain_v2` while `chain_v2` becomes `chain_v2_v2`.
    let task = task_file(
        dir.path(),
        "ch",
        &task_yaml(
            "ch",
            &source.url("src"),
            &target.url("dst"),
            "tables: { include: [\"public.chain*\"] }\ntransform:\n  - { table: \"public.chain*\", add_suffix: _v2 }\n",
        ),
    );
    run_ok(&task);
    assert_eq!(
        target
            .psql(
                "dst",
                "SELECT (SELECT v FROM public.chain_v2), (SELECT v FROM public.chain_v2_v2)"
            )
            .unwrap(),
        "first|second"
    );

    // Excluding a partitioned table keeps its partitions out, even when `public.*` matches them.
    let task = task_file(
        dir.path(),
        "ex",
        &task_yaml(
            "ex",
            &source.url("src"),
            &target.url("dst"),
            "tables: { include: [\"public.*\"], exclude: [public.events] }\n",
        ),
    );
    let plan = run_ok_args(&["plan", task.to_str().unwrap()]);
    assert!(!plan.contains("events"), "{plan}");

    // A DMS document that selects only a view moves only the view.
    std::fs::write(
        dir.path().join("v.json"),
        r#"{"rules": [{"rule-type": "selection", "rule-id": "1", "rule-name": "v", "object-locator": {"schema-name": "sales", "table-name": "order_amounts", "table-type": "view"}, "rule-action": "include"}]}"#,
    )
    .unwrap();
    let task = task_file(
        dir.path(),
        "vo",
        &task_yaml(
            "vo",
            &source.url("src"),
            &target.url("dst"),
            "dms_table_mapping: v.json\n",
        ),
    );
    let plan = run_ok_args(&["plan", task.to_str().unwrap()]);
    assert!(
        plan.contains("plan of task vo (mode full-load): 1 tables"),
        "{plan}"
    );
    assert!(plan.contains("sales.order_amounts (view)"), "{plan}");
}
