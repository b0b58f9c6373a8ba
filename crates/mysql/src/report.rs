//! The assessment report, in Markdown and HTML: a summary of how much converts as is, then
//! every source object with its target and status, action items first.

use crate::convert::{Conversion, Item, Status};
use std::collections::BTreeMap;

fn counts(items: &[Item]) -> BTreeMap<&'static str, (usize, usize, usize)> {
    let mut m: BTreeMap<&'static str, (usize, usize, usize)> = BTreeMap::new();
    for i in items {
        let e = m.entry(i.kind).or_default();
        match i.status {
            Status::Converted => e.0 += 1,
            Status::ConvertedWithLoss(_) => e.1 += 1,
            Status::ActionRequired(_) => e.2 += 1,
        }
    }
    m
}

fn status_text(s: &Status) -> (&'static str, String) {
    match s {
        Status::Converted => ("converted", String::new()),
        Status::ConvertedWithLoss(d) => ("converted with loss", d.clone()),
        Status::ActionRequired(d) => ("ACTION REQUIRED", d.clone()),
    }
}

fn ordered(items: &[Item]) -> Vec<&Item> {
    let rank = |s: &Status| match s {
        Status::ActionRequired(_) => 0,
        Status::ConvertedWithLoss(_) => 1,
        Status::Converted => 2,
    };
    let mut v: Vec<&Item> = items.iter().collect();
    v.sort_by(|a, b| {
        rank(&a.status)
            .cmp(&rank(&b.status))
            .then(a.kind.cmp(b.kind))
            .then(a.source.cmp(&b.source))
    });
    v
}

/// The share of objects converted automatically (with or without loss), in percent.
pub fn automatic_share(items: &[Item]) -> f64 {
    if items.is_empty() {
        return 100.0;
    }
    let auto = items
        .iter()
        .filter(|i| !matches!(i.status, Status::ActionRequired(_)))
        .count();
    100.0 * auto as f64 / items.len() as f64
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Markdown.
pub fn markdown(c: &Conversion, source: &str) -> String {
    let mut out = format!(
        "# Assessment: PostgreSQL {source} → MySQL/MariaDB database `{}`\n\n\
         {:.0}% of {} source objects convert automatically ({} of them with a caveat); {} need an action.\n\n\
         ## Summary\n\n| object | converted | with loss | action required |\n|---|---|---|---|\n",
        c.database,
        automatic_share(&c.items),
        c.items.len(),
        c.items
            .iter()
            .filter(|i| matches!(i.status, Status::ConvertedWithLoss(_)))
            .count(),
        c.items
            .iter()
            .filter(|i| matches!(i.status, Status::ActionRequired(_)))
            .count(),
    );
    for (kind, (a, b, d)) in counts(&c.items) {
        out.push_str(&format!("| {kind} | {a} | {b} | {d} |\n"));
    }
    out.push_str(
        "\n## Objects\n\n| kind | source | target | status | detail |\n|---|---|---|---|---|\n",
    );
    for i in ordered(&c.items) {
        let (st, detail) = status_text(&i.status);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            i.kind,
            md_cell(&i.source),
            md_cell(i.target.as_deref().unwrap_or("-")),
            st,
            md_cell(&detail)
        ));
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// HTML (one self-contained page).
pub fn html(c: &Conversion, source: &str) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>pgtide assessment</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}\
         .action{{background:#fdd}}.loss{{background:#ffd}}.ok{{background:#dfd}}</style></head><body>\n\
         <h1>Assessment: PostgreSQL {} &rarr; MySQL/MariaDB database <code>{}</code></h1>\n\
         <p>{:.0}% of {} source objects convert automatically; {} need an action.</p>\n<h2>Summary</h2>\n\
         <table><tr><th>object</th><th>converted</th><th>with loss</th><th>action required</th></tr>\n",
        esc(source),
        esc(&c.database),
        automatic_share(&c.items),
        c.items.len(),
        c.items
            .iter()
            .filter(|i| matches!(i.status, Status::ActionRequired(_)))
            .count(),
    );
    for (kind, (a, b, d)) in counts(&c.items) {
        out.push_str(&format!(
            "<tr><td>{kind}</td><td>{a}</td><td>{b}</td><td>{d}</td></tr>\n"
        ));
    }
    out.push_str("</table>\n<h2>Objects</h2>\n<table><tr><th>kind</th><th>source</th><th>target</th><th>status</th><th>detail</th></tr>\n");
    for i in ordered(&c.items) {
        let (st, detail) = status_text(&i.status);
        let class = match i.status {
            Status::Converted => "ok",
            Status::ConvertedWithLoss(_) => "loss",
            Status::ActionRequired(_) => "action",
        };
        out.push_str(&format!(
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{st}</td><td>{}</td></tr>\n",
            i.kind,
            esc(&i.source),
            esc(i.target.as_deref().unwrap_or("-")),
            esc(&detail)
        ));
    }
    out.push_str("</table>\n</body></html>\n");
    out
}
