//! Every built-in type family survives the full load through both the binary and the text
//! COPY path with edge values, and case-sensitive, quoted and odd identifiers coexist.
//! PostgreSQL is the oracle: rows are compared as the servers print them.

mod common;
use common::*;

/// One row per edge case, one column per type family. Row 1 is all NULL.
const TYPES_SQL: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'Ünïcødé mood');
CREATE TYPE pair AS (a integer, b text);
CREATE TYPE moodpair AS (m mood, note text);
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE types (
    id integer PRIMARY KEY,
    b boolean, i2 smallint, i4 integer, i8 bigint,
    n numeric, n_scaled numeric(20,6), f4 real, f8 double precision, m money,
    c char(5), vc varchar(10), t text, qc "char", nm name,
    ba bytea,
    d date, tm time, tmtz timetz, ts timestamp, tstz timestamptz, iv interval,
    u uuid, js json, jsb jsonb, x xml,
    inet_c inet, cidr_c cidr, mac macaddr, mac8 macaddr8,
    bt bit(8), vb varbit,
    pt point, ln line, ls lseg, bx box, pth path, pg polygon, ci circle,
    tsv tsvector, tsq tsquery,
    r4 int4range, r8 int8range, rn numrange, rts tsrange, rtstz tstzrange, rd daterange,
    mr int4multirange,
    a_int integer[], a_text text[], a_2d integer[][], a_lb integer[], a_num numeric[],
    lsn pg_lsn, o oid,
    p pair, dom posint, e mood
);
INSERT INTO types (id) VALUES (1);
INSERT INTO types VALUES (2,
    true, -32768, -2147483648, -9223372036854775808,
    'NaN', -0.000001, 'NaN', 'NaN', '-92233720368547758.08',
    'ab', '', '', 'x', 'name',
    '\x'::bytea,
    '4713-01-01 BC', '00:00:00', '00:00:00+14', '4713-01-01 00:00:00 BC', '-infinity', '-178000000 years',
    '00000000-0000-0000-0000-000000000000', '{"a": 1, "a": 2,   "sp": " "}', '{}', '<a/>',
    '0.0.0.0', '0.0.0.0/0', '00:00:00:00:00:00', '00:00:00:00:00:00:00:00',
    '00000000', '',
    '(0,0)', '{1,-1,0}', '[(0,0),(1,1)]', '(0,0),(0,0)', '[(0,0),(1,1)]', '((0,0),(1,0),(1,1))', '<(0,0),0>',
    '', 'a',
    'empty', '(,)', '[-1e-20,1e20)', '(,infinity)', '[-infinity,)', 'empty',
    '{}',
    '{}', '{}', '{}', '{}', '{}',
    '0/0', 0,
    ROW(NULL, NULL), 1, 'sad');
INSERT INTO types VALUES (3,
    false, 32767, 2147483647, 9223372036854775807,
    'Infinity', 99999999999999.999999, 'Infinity', 'Infinity', '92233720368547758.07',
    'abcde', 'ünïcødé 漢', E'tab\there\nnewline \\ backslash "quote" ''single''', '\', 'a b',
    '\x00'::bytea,
    '5874897-12-31', '24:00:00', '23:59:59.999999-15:59', '294276-12-31 23:59:59.999999', 'infinity', '178000000 years',
    'ffffffff-ffff-ffff-ffff-ffffffffffff', '[1, 2.50, "x", null, true]', '{"k": [1, {"n": null}], "ü": "漢"}', '<r a="1">t&amp;x</r>',
    '::1', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', 'ff:ff:ff:ff:ff:ff:ff:ff',
    '11111111', '1010101010101010101',
    '(1.5e300,-1.5e-300)', '{0,1,-2.5}', '[(1,2),(3,4)]', '(3,4),(1,2)', '((0,0),(1,1),(2,0))', '((0,0),(0,1),(1,1),(1,0))', '<(1,1),2.5>',
    'a:1A b:2B,3C c', 'a & (b | !c) <-> d',
    '[1,10)', '[-9223372036854775808,9223372036854775807)', '(0,NaN]', '[2000-01-01,2000-01-02)', '[2000-01-01 00:00+00,2000-01-01 01:00+00)', '[-infinity,infinity)',
    '{[1,3),[5,7)}',
    '{1,NULL,3}', '{"a,b","c\"d","e\\f",NULL,"NULL",""}', '{{1,2},{3,4}}', '[2:3]={7,8}', '{NaN,Infinity,-Infinity,0.000}',
    'FFFFFFFF/FFFFFFFF', 4294967295,
    ROW(-1, 'x,y"z'), 2147483647, 'Ünïcødé mood');
INSERT INTO types (id, n, f4, f8, ba, t, d, ts, tstz, iv, a_int, a_text, js, jsb)
SELECT 4, (repeat('9', 500) || '.' || repeat('1', 500))::numeric, '-0', '-0',
       NULL,
       (SELECT string_agg(chr(c), '') FROM generate_series(1, 2000) c WHERE c NOT BETWEEN 55296 AND 57343),
       'infinity', '-infinity', '1999-12-31 23:59:59.123456+00', '1 year 2 mons -3 days 04:05:06.789',
       ARRAY[]::integer[], ARRAY[NULL, NULL]::text[], 'null', '"string"';
INSERT INTO types (id, f4, f8, n) VALUES (5, '1.17549435e-38', '4.9e-324', '-123456789012345678901234567890.098765432109876543210');
UPDATE types SET ba = '\x00ff00'::bytea WHERE id = 5;
UPDATE types SET ba = decode((SELECT string_agg(lpad(to_hex(b), 2, '0'), '') FROM generate_series(0, 255) b), 'hex') WHERE id = 4;

-- User types inside arrays and composites embed OIDs in binary COPY: this table must go text.
CREATE TABLE udt (
    id integer PRIMARY KEY,
    moods mood[],
    pairs pair[],
    mp moodpair,
    doms posint[]
);
INSERT INTO udt VALUES (1, NULL, NULL, NULL, NULL),
    (2, '{}', '{}', ROW(NULL, NULL), '{}'),
    (3, '{sad,happy,NULL,"Ünïcødé mood"}', ARRAY[ROW(1,'a'), ROW(NULL, 'b"c'), NULL]::pair[], ROW('ok', 'fine, thanks'), '{1,2,3}');
"#;

const NAMES_SQL: &str = r#"
CREATE TABLE public.t (id integer PRIMARY KEY, v text);
CREATE TABLE public."T" (id integer PRIMARY KEY, "V" text, "Mixed Col" integer);
CREATE TABLE public."My Table" ("the id" integer PRIMARY KEY, "t" integer REFERENCES public.t (id));
CREATE TABLE public."a.b" (id integer PRIMARY KEY, "x.y" text);
CREATE SCHEMA "Odd ""Schema""";
CREATE TABLE "Odd ""Schema"""."q""uote" (id serial PRIMARY KEY, "sp ace" text, "ünï" text);
CREATE INDEX "Idx With Space" ON public."T" ("Mixed Col");
CREATE SEQUENCE "Odd ""Schema""".standalone START 42;
SELECT nextval('"Odd ""Schema""".standalone');
INSERT INTO public.t SELECT g, 'lower ' || g FROM generate_series(1, 100) g;
INSERT INTO public."T" SELECT g, 'UPPER ' || g, g * 2 FROM generate_series(1, 50) g;
INSERT INTO public."My Table" SELECT g, g FROM generate_series(1, 30) g;
INSERT INTO public."a.b" VALUES (1, 'dot');
INSERT INTO "Odd ""Schema"""."q""uote" ("sp ace", "ünï") SELECT 'v' || g, 'ü' || g FROM generate_series(1, 20) g;
"#;

fn rows(server: &pgtide_testkit::PgServer, db: &str, table: &str) -> String {
    server
        .psql(
            db,
            &format!(
                "SET extra_float_digits = 1; SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
                 SELECT string_agg(x::text, E'\\n' ORDER BY x.id) FROM {table} x"
            ),
        )
        .unwrap()
}

#[test]
fn every_type_family_round_trips_through_binary_and_text_copy() {
    let pair = Pair::start();
    pair.source.create_database("types").unwrap();
    pair.source
        .psql("types", TYPES_SQL)
        .expect("type fixture loads on the source");
    let dir = tempfile::tempdir().unwrap();
    for (db, extra) in [
        ("viabinary", ""),
        ("viatext", "full_load: { copy_format: text }\n"),
    ] {
        pair.target.create_database(db).unwrap();
        let task = task_file(
            dir.path(),
            db,
            &task_yaml(db, &pair.source.url("types"), &pair.target.url(db), extra),
        );
        run_ok(&task);
        for table in ["public.types", "public.udt"] {
            let s = rows(&pair.source, "types", table);
            let t = rows(&pair.target, db, table);
            if s != t {
                for (a, b) in s.lines().zip(t.lines()) {
                    assert_eq!(a, b, "{db}: {table} differs");
                }
                panic!("{db}: {table} differs in row count");
            }
        }
        let v = compare(&pair.source.url("types"), &pair.target.url(db), &["public"]);
        assert!(v.ok(), "{db}: {}", v.render());
        let formats = pair
            .target
            .psql(db, "SELECT string_agg(source_table || '=' || format, ',' ORDER BY source_table) FROM pgtide.load_table")
            .unwrap();
        if db == "viabinary" {
            assert_eq!(
                formats, "types=binary,udt=text",
                "user types inside arrays/composites need text"
            );
        } else {
            assert_eq!(formats, "types=text,udt=text");
        }
    }
}

#[test]
fn case_sensitive_and_quoted_identifiers_coexist_and_select_exactly() {
    let pair = Pair::start();
    pair.source.create_database("names").unwrap();
    pair.source.psql("names", NAMES_SQL).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Everything.
    pair.target.create_database("all").unwrap();
    let task = task_file(
        dir.path(),
        "all",
        &task_yaml(
            "names",
            &pair.source.url("names"),
            &pair.target.url("all"),
            "",
        ),
    );
    run_ok(&task);
    let v = compare(
        &pair.source.url("names"),
        &pair.target.url("all"),
        &["public", "Odd \"Schema\""],
    );
    assert!(v.ok(), "{}", v.render());
    assert_eq!(v.tables.len(), 5, "{}", v.render());
    assert_eq!(v.sequence_mismatches.len(), 0);

    // Only the upper-case table: "T" must not drag in t, and t must not match "T".
    pair.target.create_database("upper").unwrap();
    let task = task_file(
        dir.path(),
        "upper",
        &task_yaml(
            "upper",
            &pair.source.url("names"),
            &pair.target.url("upper"),
            "tables: { include: ['public.\"T\"', 'public.\"a.b\"'] }\n",
        ),
    );
    let out = run_ok(&task);
    assert!(out.contains("public.\"T\""), "{out}");
    let tables = pair
        .target
        .psql("upper", "SELECT string_agg(format('%I.%I', schemaname, tablename), ',' ORDER BY schemaname, tablename) FROM pg_tables WHERE schemaname <> 'pgtide' AND schemaname <> 'pg_catalog' AND schemaname <> 'information_schema'")
        .unwrap();
    assert_eq!(tables, "public.\"T\",public.\"a.b\"");
    assert_eq!(
        pair.target
            .psql("upper", "SELECT count(*) FROM public.\"T\"")
            .unwrap(),
        "50"
    );

    // Unquoted patterns fold: public.T means public.t, and a foreign key to an unselected
    // table is reported, not silently half-created.
    pair.target.create_database("lower").unwrap();
    let task = task_file(
        dir.path(),
        "lower",
        &task_yaml(
            "lower",
            &pair.source.url("names"),
            &pair.target.url("lower"),
            "tables: { include: ['public.T', 'public.\"My Table\"'] }\n",
        ),
    );
    run_ok(&task);
    assert_eq!(
        pair.target
            .psql("lower", "SELECT count(*) FROM public.t")
            .unwrap(),
        "100"
    );
    assert!(
        pair.target
            .psql("lower", "SELECT count(*) FROM public.\"T\"")
            .is_err()
    );
    assert_eq!(
        pair.target
            .psql(
                "lower",
                "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
            )
            .unwrap(),
        "1",
        "My Table references t, and both are selected"
    );

    // A foreign key to a table that is not selected is reported, not half-created.
    pair.target.create_database("partial").unwrap();
    let task = task_file(
        dir.path(),
        "partial",
        &task_yaml(
            "partial",
            &pair.source.url("names"),
            &pair.target.url("partial"),
            "tables: { include: ['public.\"My Table\"'] }\n",
        ),
    );
    let out = run_ok(&task);
    assert!(
        out.contains("warning: foreign key My Table_t_fkey on public.\"My Table\" is not created: it references public.t, which is not selected"),
        "{out}"
    );
    assert_eq!(
        pair.target
            .psql(
                "partial",
                "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
            )
            .unwrap(),
        "0"
    );
    assert_eq!(
        pair.target
            .psql("partial", "SELECT count(*) FROM public.\"My Table\"")
            .unwrap(),
        "30"
    );
}
