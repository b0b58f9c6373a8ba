//! The schema archive turned into work: the pre-data script (run once, atomically, before the
//! load), per-table index and constraint jobs (run as each table's rows are in), and the rest of
//! post-data (run at the end). See `pgtide_postgres::schema_copy` for why pgtide runs the SQL
//! itself instead of `pg_restore -d`.

use super::*;

/// DDL derived from the schema archive.
pub(super) struct SchemaWork {
    /// Pre-data script with `DROP ... IF EXISTS` first.
    pub(super) pre_script: Script,
    /// Primary keys built with the tables (before the load), by constraint OID.
    pub(super) pre_load_keys: Vec<(u32, String)>,
    /// Per-table DDL jobs: (table, constraint/index OID, foreign key?, label, SQL, references).
    pub(super) jobs: Vec<SchemaJob>,
    /// Everything else in post-data, run at the end.
    pub(super) post_script: Script,
    /// pg_restore's session settings.
    pub(super) session_setup: String,
    /// Skipped objects.
    pub(super) warnings: Vec<String>,
}

pub(super) struct SchemaJob {
    /// State step key.
    pub(super) key: String,
    pub(super) table: u32,
    pub(super) foreign_key: bool,
    pub(super) references: Option<u32>,
    /// Keys of jobs that must be done first (an index attachment needs both indexes).
    pub(super) after: Vec<String>,
    pub(super) label: String,
    pub(super) sql: String,
}

/// How an archive entry becomes work.
pub(super) enum EntryUse {
    /// A per-table job: table, foreign key?, referenced table, primary key?
    Job {
        table: u32,
        fk: bool,
        refs: Option<u32>,
        pk: bool,
    },
    /// `ALTER INDEX parent ATTACH PARTITION child`: parent's table, parent and child index OIDs.
    Attach { table: u32, parent: u32, child: u32 },
}

pub(super) async fn prepare_schema_work(
    schema: &Schema,
    plan: &LoadPlan,
    task: &Task,
    archive: &SchemaArchive,
    skip: &HashSet<(u32, u32)>,
) -> Result<SchemaWork> {
    let opts = ScriptOptions {
        owners: task.schema.owners,
        privileges: task.schema.privileges,
        clean: false,
    };
    let mut warnings = Vec::new();
    // Index and constraint OIDs of selected tables.
    let mut index_table: HashMap<u32, u32> = HashMap::new();
    let mut index_by_name: HashMap<(String, String), (u32, Option<u32>)> = HashMap::new();
    let mut constraint_info: HashMap<u32, (u32, ConstraintKind, Option<u32>, Option<u32>)> =
        HashMap::new();
    for t in schema
        .tables
        .iter()
        .filter(|t| plan.selected.contains(&t.oid))
    {
        for i in &t.indexes {
            index_table.insert(i.oid, t.oid);
            index_by_name.insert(
                (t.name.schema.clone(), i.name.clone()),
                (i.oid, i.parent_index),
            );
        }
        for c in &t.constraints {
            constraint_info.insert(c.oid, (t.oid, c.kind, c.references, c.index));
        }
    }
    let pk_before = task.full_load.primary_keys == PrimaryKeyTiming::BeforeLoad;
    // Entries that may become per-table jobs. Each prints exactly one segment, so entries and
    // segments pair up by position; names come from the segment headers, which (unlike
    // `pg_restore -l` lines) stay unambiguous when a schema or table name contains spaces.
    const JOB_DESCS: &[&str] = &[
        "INDEX",
        "CONSTRAINT",
        "CHECK CONSTRAINT",
        "FK CONSTRAINT",
        "INDEX ATTACH",
    ];
    // Entries that use a column a rule removes are left out (`rules::rule_ddl` warned).
    let kept = |e: &&TocEntry| !skip.contains(&(e.catalog_oid, e.object_oid));
    let candidates: Vec<&TocEntry> = archive
        .post_data
        .iter()
        .filter(kept)
        .filter(|e| JOB_DESCS.contains(&e.desc.as_str()))
        .collect();
    let job_script = archive.sql(&candidates, &opts).await?;
    if job_script.segments.len() != candidates.len()
        || job_script
            .segments
            .iter()
            .zip(&candidates)
            .any(|(s, e)| s.desc != e.desc)
    {
        return Err(Error::internal(format!(
            "pg_restore printed {} index/constraint entries for {} requested; cannot pair them",
            job_script.segments.len(),
            candidates.len()
        )));
    }
    let mut uses: Vec<(&TocEntry, &pgtide_postgres::schema_copy::Segment, EntryUse)> = Vec::new();
    let mut rest: Vec<&TocEntry> = archive
        .post_data
        .iter()
        .filter(kept)
        .filter(|e| !JOB_DESCS.contains(&e.desc.as_str()))
        .collect();
    // Which job creates each index (an index job, or the constraint it backs).
    let mut index_job: HashMap<u32, String> = HashMap::new();
    let mut attaches = Vec::new();
    for (e, seg) in candidates.iter().copied().zip(&job_script.segments) {
        match e.desc.as_str() {
            "INDEX" if index_table.contains_key(&e.object_oid) => {
                index_job.insert(e.object_oid, format!("ddl:{}", e.object_oid));
                uses.push((
                    e,
                    seg,
                    EntryUse::Job {
                        table: index_table[&e.object_oid],
                        fk: false,
                        refs: None,
                        pk: false,
                    },
                ));
            }
            "CONSTRAINT" | "CHECK CONSTRAINT" | "FK CONSTRAINT"
                if constraint_info.contains_key(&e.object_oid) =>
            {
                let (table, kind, refs, index) = constraint_info[&e.object_oid];
                if kind == ConstraintKind::ForeignKey {
                    let r = refs.unwrap_or(0);
                    if !plan.selected.contains(&r) {
                        let tn = schema
                            .table(table)
                            .map(|t| t.name.to_string())
                            .unwrap_or_default();
                        let rn = schema
                            .table(r)
                            .map(|t| t.name.to_string())
                            .unwrap_or_else(|| r.to_string());
                        let con = schema
                            .table(table)
                            .and_then(|t| t.constraints.iter().find(|c| c.oid == e.object_oid))
                            .map(|c| c.name.clone())
                            .unwrap_or_default();
                        warnings.push(format!(
                            "foreign key {con} on {tn} is not created: it references {rn}, which is not selected"
                        ));
                        continue;
                    }
                }
                let pk = kind == ConstraintKind::PrimaryKey;
                if let Some(i) = index
                    && !(pk && pk_before)
                    && kind != ConstraintKind::ForeignKey
                {
                    index_job.insert(i, format!("ddl:{}", e.object_oid));
                }
                uses.push((
                    e,
                    seg,
                    EntryUse::Job {
                        table,
                        fk: kind == ConstraintKind::ForeignKey,
                        refs,
                        pk,
                    },
                ));
            }
            "INDEX ATTACH" => attaches.push((e, seg)),
            _ => rest.push(e),
        }
    }
    // Index attachments become jobs too: a foreign key that references a partitioned table
    // needs the parent's unique index, which is valid only once every partition's is attached.
    for (e, seg) in attaches {
        if let Some(schema_name) = &seg.schema
            && let Some((child, Some(parent))) =
                index_by_name.get(&(schema_name.clone(), seg.name.clone()))
            && let Some(&table) = index_table.get(parent)
        {
            uses.push((
                e,
                seg,
                EntryUse::Attach {
                    table,
                    parent: *parent,
                    child: *child,
                },
            ));
        } else {
            rest.push(e);
        }
    }
    // Keep the rest in dump order.
    rest.sort_by_key(|e| {
        archive
            .post_data
            .iter()
            .position(|x| x.dump_id == e.dump_id)
    });
    let mut jobs = Vec::new();
    let mut pre_load_keys = Vec::new();
    for (e, seg, u) in &uses {
        let label = format!(
            "{} {}{}",
            seg.desc,
            seg.schema
                .as_deref()
                .map(|s| format!("{}.", pgtide_core::ident::display_ident(s)))
                .unwrap_or_default(),
            seg.name
        );
        match u {
            EntryUse::Job { pk: true, .. } if pk_before => {
                pre_load_keys.push((e.object_oid, seg.sql.clone()))
            }
            EntryUse::Job {
                table, fk, refs, ..
            } => jobs.push(SchemaJob {
                key: format!("ddl:{}", e.object_oid),
                table: *table,
                foreign_key: *fk,
                references: *refs,
                after: Vec::new(),
                label,
                sql: seg.sql.clone(),
            }),
            EntryUse::Attach {
                table,
                parent,
                child,
            } => jobs.push(SchemaJob {
                key: format!("attach:{child}"),
                table: *table,
                foreign_key: false,
                references: None,
                // Indexes made before the load (primary keys) have no job to wait for.
                after: [parent, child]
                    .iter()
                    .filter_map(|i| index_job.get(i).cloned())
                    .collect(),
                label,
                sql: seg.sql.clone(),
            }),
        }
    }
    let pre_entries: Vec<&TocEntry> = archive.pre_data.iter().collect();
    let pre_script = archive
        .sql(
            &pre_entries,
            &ScriptOptions {
                clean: true,
                ..opts
            },
        )
        .await?;
    let post_script = archive.sql(&rest, &opts).await?;
    let session_setup = if job_script.preamble.is_empty() {
        post_script.preamble.clone()
    } else {
        job_script.preamble.clone()
    };
    Ok(SchemaWork {
        pre_script,
        pre_load_keys,
        jobs,
        post_script,
        session_setup,
        warnings,
    })
}

/// Drop the selected tables where they exist on the target, then create the pre-data schema
/// and the primary keys, all in one transaction with the step's state row.
pub(super) async fn create_schema(
    target: &Client,
    task: &Task,
    schema: &Schema,
    plan: &LoadPlan,
    sw: &SchemaWork,
    rule_ddl: &RuleDdl,
) -> Result<()> {
    let started = Instant::now();
    // The source names, and the final names an earlier finished run left behind.
    let mut selected: Vec<&QualifiedName> = schema
        .tables
        .iter()
        .filter(|t| plan.selected.contains(&t.oid))
        .map(|t| &t.name)
        .collect();
    for m in plan.mappings.values() {
        if !selected.contains(&&m.target) {
            selected.push(&m.target);
        }
    }
    for t in plan.tables.iter().filter(|t| t.view) {
        selected.push(&t.target);
    }
    let schemas: Vec<String> = selected.iter().map(|n| n.schema.clone()).collect();
    let names: Vec<String> = selected.iter().map(|n| n.name.clone()).collect();
    let existing = target
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text FROM unnest($1::text[], $2::text[]) AS w(s, t) \
             JOIN pg_namespace n ON n.nspname = w.s \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t AND c.relkind IN ('r', 'p', 'f')",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| classify(e, "looking for existing target tables"))?;
    in_transaction(target, "creating the schema on the target", async {
        if !existing.is_empty() {
            let oids: Vec<u32> = existing.iter().map(|r| r.get(0)).collect();
            // What else goes with them: views that read them, foreign keys that point at them.
            let deps = target
                .query(
                    "SELECT DISTINCT format('%s %s', CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' ELSE 'table' END, c.oid::regclass::text) \
                     FROM pg_depend d JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
                     JOIN pg_class c ON c.oid = r.ev_class \
                     WHERE d.refobjid = ANY($1) AND NOT (r.ev_class = ANY($1)) \
                     UNION \
                     SELECT DISTINCT format('foreign key %s on %s', con.conname, con.conrelid::regclass::text) FROM pg_constraint con \
                     WHERE con.contype = 'f' AND con.confrelid = ANY($1) AND NOT (con.conrelid = ANY($1))",
                    &[&oids],
                )
                .await
                .map_err(|e| classify(e, "finding objects that depend on the target tables"))?;
            for d in &deps {
                tracing::warn!("drop-and-create also drops {} on the target, which depends on a table being replaced", d.get::<_, String>(0));
            }
            let list: Vec<String> = existing
                .iter()
                .map(|r| QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)).quoted())
                .collect();
            tracing::info!(tables = existing.len(), "dropping target tables that will be re-created");
            target
                .batch_execute(&format!("DROP TABLE IF EXISTS {} CASCADE", list.join(", ")))
                .await
                .map_err(|e| classify(e, "dropping the existing target tables"))?;
        }
        // Removed and retyped columns, right after each table is created (before views and
        // partition attachments refer to it).
        run_script_with(target, &sw.pre_script, &rule_ddl.reshape).await?;
        super::rules::run_labelled(target, &rule_ddl.drops).await?;
        // Views copied as tables: a table with the view's columns (types qualified, see
        // `View::columns`).
        for t in plan.tables.iter().filter(|t| t.view) {
            let Some(v) = schema.views.iter().find(|v| v.oid == t.oid) else {
                continue;
            };
            let cols: Vec<String> = v
                .columns
                .iter()
                .map(|c| format!("{} {}", quote_ident(&c.name), c.type_name))
                .collect();
            target
                .batch_execute(&format!("CREATE TABLE {} ({})", t.target.quoted(), cols.join(", ")))
                .await
                .map_err(|e| {
                    classify(e, &format!("creating table {} for the view's rows on the target", t.target))
                        .with_hint("a relation of that name may already exist on the target (drop it), or a column type is missing there")
                })?;
        }
        for (_, sql) in &sw.pre_load_keys {
            target.batch_execute(sql).await.map_err(|e| classify(e, "creating a primary key on the target"))?;
        }
        state::step_done(target, &task.name, "schema-pre", started.elapsed().as_secs_f64()).await
    })
    .await?;
    // pg_restore's preamble changed this session's settings (search_path = ''); put them back.
    target
        .batch_execute("RESET ALL")
        .await
        .map_err(|e| classify(e, "resetting the session"))
}

pub(super) async fn run_script(target: &Client, script: &Script) -> Result<()> {
    run_script_with(target, script, &HashMap::new()).await
}

/// Run a script; after the `TABLE` segment of a table in `after`, run that table's statements.
/// Statements whose table the script did not create run at the end.
pub(super) async fn run_script_with(
    target: &Client,
    script: &Script,
    after: &HashMap<QualifiedName, Vec<(String, String)>>,
) -> Result<()> {
    let mut pending: HashSet<&QualifiedName> = after.keys().collect();
    if !script.preamble.trim().is_empty() {
        target
            .batch_execute(&script.preamble)
            .await
            .map_err(|e| classify(e, "running pg_restore's preamble on the target"))?;
    }
    for s in &script.segments {
        if s.sql.trim().is_empty() {
            continue;
        }
        target.batch_execute(&s.sql).await.map_err(|e| {
            classify(
                e,
                &format!(
                    "creating {} {}{} on the target",
                    s.desc,
                    s.schema
                        .as_deref()
                        .map(|x| format!("{x}."))
                        .unwrap_or_default(),
                    s.name
                ),
            )
        })?;
        if s.desc == "TABLE"
            && let Some(schema) = &s.schema
        {
            let name = QualifiedName::new(schema.clone(), s.name.clone());
            if let Some(steps) = after.get(&name) {
                pending.remove(&name);
                super::rules::run_labelled(target, steps).await?;
            }
        }
    }
    for name in pending {
        super::rules::run_labelled(target, &after[name]).await?;
    }
    Ok(())
}

pub(super) async fn run_script_step(
    target: &Client,
    task: &Task,
    step: &str,
    script: &Script,
    what: &str,
) -> Result<()> {
    let started = Instant::now();
    in_transaction(target, what, async {
        run_script(target, script).await?;
        state::step_done(target, &task.name, step, started.elapsed().as_secs_f64()).await
    })
    .await?;
    // pg_restore's preamble changed this session's search_path; put it back for our queries.
    target
        .batch_execute("RESET ALL")
        .await
        .map_err(|e| classify(e, what))
}
