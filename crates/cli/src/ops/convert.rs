//! `pgtide convert`: the MySQL schema and the assessment report for a task with a MySQL or
//! MariaDB target, written to a directory for review before anything moves.
//!
//! Reads the source catalog only (the target is not contacted): the same selection as `run`,
//! converted by [`pgtide_mysql::convert`], written as `schema.sql`, `assessment.md` and
//! `assessment.html`.

use crate::plan;
use pgtide_core::endpoint::EndpointKind;
use pgtide_core::task::Task;
use pgtide_core::{Error, ErrorKind, Result};
use pgtide_mysql::convert::{Conversion, Item, SourceFunction, Status, convert};
use pgtide_mysql::report;
use pgtide_postgres::connect::{Side, connect};
use pgtide_postgres::introspect;
use std::path::{Path, PathBuf};

/// What `convert` wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The conversion.
    pub conversion: Conversion,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Convert the task's source schema for its MySQL target and write the files into `out`.
pub async fn run(task: &Task, out: &Path) -> Result<Converted> {
    if task.target.kind() != EndpointKind::Mysql {
        return Err(Error::config(
            "pgtide convert is for MySQL/MariaDB targets; this task's target is PostgreSQL",
        )
        .with_hint("PostgreSQL targets get the source's schema as is (pg_dump); use pgtide plan to see what moves"));
    }
    task.refuse_rules("a MySQL/MariaDB target")?;
    let source = connect(&task.source.url, Side::Source).await?;
    let schema = introspect::introspect(&source).await?;
    let (load_plan, _) = plan::plan(&schema, task)?;
    let functions: Vec<SourceFunction> = introspect::functions(&source)
        .await?
        .into_iter()
        .map(|(name, arguments, kind, language)| SourceFunction {
            name,
            arguments,
            kind,
            language,
        })
        .collect();
    let mut conversion = convert(
        &schema,
        &load_plan.selected,
        &functions,
        &task.target.url.database,
    );
    // Objects outside the schema model: domain constraints, types no column uses, indexes
    // on materialized views. Each still gets its line in the report.
    for (kind, name, detail) in introspect::other_objects(&source).await? {
        let item = match kind.as_str() {
            "type" => {
                if conversion
                    .items
                    .iter()
                    .any(|i| i.kind == "type" && i.source == name)
                {
                    continue;
                }
                Item {
                    kind: "type",
                    source: name,
                    target: None,
                    status: Status::ConvertedWithLoss(format!(
                        "{detail} type not used by any selected column: nothing to create"
                    )),
                }
            }
            "domain constraint" => Item {
                kind: "constraint",
                source: name,
                target: None,
                status: Status::ActionRequired(format!(
                    "domain constraint {detail} is not enforced on the target: add an equivalent CHECK to each column of the domain"
                )),
            },
            _ => Item {
                kind: "index",
                source: name,
                target: None,
                status: Status::ActionRequired(format!(
                    "an index on a materialized view: create it on whatever replaces the view. Source: {detail}"
                )),
            },
        };
        conversion.items.push(item);
    }
    std::fs::create_dir_all(out).map_err(|e| {
        Error::new(ErrorKind::Io, format!("creating {}", out.display()))
            .with_source(e)
            .with_hint("give a directory you can write to with --out")
    })?;
    let source_name = format!("database {}", task.source.url.database);
    let files = [
        ("schema.sql", conversion.ddl.clone()),
        ("assessment.md", report::markdown(&conversion, &source_name)),
        ("assessment.html", report::html(&conversion, &source_name)),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| {
            Error::new(ErrorKind::Io, format!("writing {}", path.display())).with_source(e)
        })?;
        written.push(path);
    }
    Ok(Converted {
        conversion,
        files: written,
    })
}

impl Converted {
    /// A short summary for the terminal.
    pub fn render(&self) -> String {
        let items = &self.conversion.items;
        let action = items
            .iter()
            .filter(|i| matches!(i.status, Status::ActionRequired(_)))
            .count();
        let loss = items
            .iter()
            .filter(|i| matches!(i.status, Status::ConvertedWithLoss(_)))
            .count();
        let mut out = format!(
            "converted for MySQL/MariaDB database {}: {} tables; {:.0}% of {} source objects convert automatically ({loss} with a caveat), {action} need an action\n",
            self.conversion.database,
            self.conversion.table_names.len(),
            report::automatic_share(items),
            items.len()
        );
        for f in &self.files {
            out.push_str(&format!("  wrote {}\n", f.display()));
        }
        out
    }
}
