//! Order-independent table fingerprints, computed on the server.
//!
//! A fingerprint is the row count and the sum, as `numeric`, of the first 64 bits of each row's
//! MD5 over its text form. A sum does not depend on row order, so source and target can be
//! compared without sorting; a duplicated row adds its hash twice, a changed value changes one
//! term. Both sides must print values the same way, so the session is pinned to fixed output
//! settings first ([`pin_output_settings`]), and the text is hashed as UTF-8 whatever the
//! server encoding (a LATIN1 source and a UTF8 target print the same characters as different
//! bytes); pgtide itself never reads the row text.

use crate::connect::classify;
use pgtide_core::Result;
use pgtide_core::ident::{QualifiedName, quote_ident};
use tokio_postgres::GenericClient;

/// Session settings that make value text independent of server defaults.
pub const OUTPUT_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
    SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'; \
    SET xmloption = content; SET lc_monetary = 'C'";

/// Apply [`OUTPUT_SETTINGS`].
pub async fn pin_output_settings<C: GenericClient>(client: &C) -> Result<()> {
    client
        .batch_execute(OUTPUT_SETTINGS)
        .await
        .map_err(|e| classify(e, "setting output options for comparison"))
}

/// Row count and checksum of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Rows.
    pub rows: i64,
    /// Sum of 64-bit row hashes, as decimal text.
    pub checksum: String,
}

/// The fingerprint of `table` over `columns` (rows of this table only, not its children).
pub async fn fingerprint<C: GenericClient>(
    client: &C,
    table: &QualifiedName,
    columns: &[String],
) -> Result<Fingerprint> {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let row_expr = if cols.is_empty() {
        "''".to_string()
    } else {
        format!("ROW({})::text", cols.join(", "))
    };
    let sql = format!(
        "SELECT count(*), coalesce(sum(('x' || substr(md5(convert_to({row_expr}, 'UTF8')), 1, 16))::bit(64)::int8::numeric), 0)::text \
         FROM ONLY {}",
        table.quoted()
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| classify(e, &format!("computing the fingerprint of {table}")))?;
    Ok(Fingerprint {
        rows: row.get(0),
        checksum: row.get(1),
    })
}
