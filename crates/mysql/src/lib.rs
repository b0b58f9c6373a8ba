//! MySQL 8 and MariaDB 10.11 as pgtide's target.
//!
//! - [`types`]: every PostgreSQL type mapped to a MySQL column type, each with its fidelity
//!   (lossless, lossy with the reason, unsupported with the way out). `docs/mysql-types.md` is
//!   the same table for people.
//! - [`convert`]: the source schema model turned into MySQL DDL (tables, keys, indexes,
//!   foreign keys) with names that fit MySQL's rules, and an assessment of every source object.
//! - [`report`]: that assessment as Markdown and HTML, like AWS SCT's.
//! - [`load`]: rows streamed into MySQL with `LOAD DATA LOCAL INFILE`, nothing altered silently.
//! - [`range`]: values a MySQL column cannot hold (BC/infinite dates, NaN, too many digits)
//!   and the task's `mysql.out_of_range` policy for them, shared by the full load and CDC.
//! - [`rows`]: full-load rows from COPY text into `LOAD DATA` text or INSERT parameters.
//! - [`values`]: the replication stream's text values in the forms MySQL stores.
//! - [`apply`]: committed source transactions applied in order, exactly once, the checkpoint in
//!   the same InnoDB transaction.

pub mod apply;
pub mod convert;
pub mod load;
pub mod range;
pub mod report;
pub mod rows;
pub mod types;
pub mod values;
