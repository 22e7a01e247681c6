//! Looks for key material where it must never be: the metadata database.
//!
//! Two checks. [`find_secrets_in_sqlite`] is exact: given the key values a
//! test imported into the HSM, it reports every place any of them appears,
//! raw or in a common text encoding, both in every cell of every table and in
//! the raw database files (which also holds deleted rows, free pages and the
//! WAL). [`suspicious_values_in_sqlite`] needs no secrets: it reports any
//! value that merely looks like key material.

use std::future::Future;
use std::path::{Path, PathBuf};

/// One value of one row of one table, as the bytes of its text form
/// (`CAST(x AS BLOB)`: a blob's bytes, a text's UTF-8, a number's digits).
#[derive(Debug, Clone)]
pub struct Cell {
    pub table: String,
    pub column: String,
    pub rowid: i64,
    /// SQLite's `typeof()`: null, integer, real, text or blob.
    pub kind: String,
    pub bytes: Vec<u8>,
}

impl Cell {
    fn place(&self) -> String {
        format!("{}.{} (rowid {})", self.table, self.column, self.rowid)
    }
}

/// Every cell of every table (including SQLite's and sqlx's own).
pub fn sqlite_cells(path: &Path) -> Vec<Cell> {
    let path = path.to_owned();
    run_async(async move {
        match read_cells(&path).await {
            Ok(cells) => cells,
            Err(e) => panic!("cannot read {}: {e}", path.display()),
        }
    })
}

/// Every occurrence of any of `forbidden` in the database at `path`: in any
/// column (raw, hex in either case, base64, or a decimal byte list such as
/// serde writes for `Vec<u8>`), and in the raw bytes of the database, its WAL
/// and its journal. Empty means clean.
pub fn find_secrets_in_sqlite(path: &Path, forbidden: &[&[u8]]) -> Vec<String> {
    for (i, secret) in forbidden.iter().enumerate() {
        // Shorter values would match by chance in a file of random ids.
        assert!(
            secret.len() >= 8,
            "forbidden value #{i} has {} bytes; at least 8 are needed for a meaningful search",
            secret.len()
        );
    }
    let mut found = Vec::new();

    for file in database_files(path) {
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        let lower = bytes.to_ascii_lowercase();
        for (i, secret) in forbidden.iter().enumerate() {
            for (encoding, needle) in encodings(secret) {
                let haystack = if encoding.starts_with("hex") {
                    &lower
                } else {
                    &bytes
                };
                let needle = if encoding.starts_with("hex") {
                    needle.to_ascii_lowercase()
                } else {
                    needle
                };
                if let Some(at) = find(haystack, &needle) {
                    found.push(format!(
                        "file {}: forbidden value #{i} as {encoding} at offset {at}",
                        file.display()
                    ));
                }
            }
        }
    }

    for cell in sqlite_cells(path) {
        let lower = cell.bytes.to_ascii_lowercase();
        let no_spaces: Vec<u8> = cell
            .bytes
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        for (i, secret) in forbidden.iter().enumerate() {
            for (encoding, needle) in encodings(secret) {
                let hit = match encoding {
                    "raw" | "base64" => find(&cell.bytes, &needle).is_some(),
                    "decimal list" => find(&no_spaces, &needle).is_some(),
                    _ => find(&lower, &needle.to_ascii_lowercase()).is_some(),
                };
                if hit {
                    found.push(format!(
                        "{}: forbidden value #{i} as {encoding}",
                        cell.place()
                    ));
                }
            }
        }
    }
    found
}

/// Values that look like key material although no secret is known: any blob,
/// any run of 13 or more hex digits (a UUID's longest group has 12), any long
/// mixed-case alphanumeric run (base64), except the hex values the schema is
/// meant to hold: `key_versions.object_id` (exactly 32 hex digits),
/// `key_versions.kcv` (at most 10) and the approval digests (exactly 64).
/// sqlx's own migration table is skipped: its checksums are hashes and its
/// text is our schema.
pub fn suspicious_values_in_sqlite(path: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for cell in sqlite_cells(path) {
        if cell.table == "_sqlx_migrations" || cell.kind == "null" {
            continue;
        }
        let text = String::from_utf8_lossy(&cell.bytes);
        let at = (cell.table.as_str(), cell.column.as_str());
        if cell.kind == "blob" {
            found.push(format!(
                "{}: a blob of {} bytes",
                cell.place(),
                cell.bytes.len()
            ));
            continue;
        }
        // An audit record's JSON carries the chain's hashes, a request's
        // JSON a certificate fingerprint; judge the rest.
        let stripped;
        let text: &str = if at == ("audit_records", "body") {
            stripped = strip_chain_fields(&text);
            stripped.as_str()
        } else if at == ("approval_requests", "operation") {
            stripped = strip_keys(&text, &["cert_sha256"]);
            stripped.as_str()
        } else {
            text.as_ref()
        };
        match at {
            ("key_versions", "object_id") => {
                if !(text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())) {
                    found.push(format!("{}: not a 32-digit object id", cell.place()));
                }
                continue;
            }
            // SHA-256 of a dual-control request; shape alone cannot tell a
            // hash from a key, which is what the exact search is for.
            ("approval_requests" | "approvals", "digest") => {
                if !(text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())) {
                    found.push(format!("{}: not a SHA-256 digest", cell.place()));
                }
                continue;
            }
            // The audit chain's own hashes, MACs and checkpoint signatures.
            ("audit_head", "hash")
            | ("audit_records", "prev" | "hash" | "mac")
            | ("audit_checkpoints", "hash" | "signature") => {
                let ok_len = matches!(text.len(), 0 | 64 | 128);
                if !(ok_len && text.bytes().all(|b| b.is_ascii_hexdigit())) {
                    found.push(format!("{}: not a hash, MAC or signature", cell.place()));
                }
                continue;
            }
            // TSM-AC-1: a custodian's PIN only as an Argon2id PHC string
            // (salt and hash in base64), and their certificate's SHA-256.
            ("custodians", "pin_hash") => {
                if !is_argon2id_phc(text) {
                    found.push(format!("{}: not an Argon2id PHC string", cell.place()));
                }
                continue;
            }
            ("custodians", "cert_sha256") => {
                if !(text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())) {
                    found.push(format!("{}: not a SHA-256 fingerprint", cell.place()));
                }
                continue;
            }
            // Issue 5: an approver's ECDSA signature (DER, at most 72
            // bytes) and their public certificate (DER), both hex; the
            // installation's facts (names, the adopted policy's SHA-256).
            ("approvals", "signature") => {
                if !(text.len() <= 144 && text.bytes().all(|b| b.is_ascii_hexdigit())) {
                    found.push(format!("{}: not an ECDSA signature", cell.place()));
                }
                continue;
            }
            ("approvals", "approver_cert") => {
                let der = hex::decode(text).unwrap_or_default();
                if x509_parser_like(&der).is_none() {
                    found.push(format!("{}: not a certificate", cell.place()));
                }
                continue;
            }
            ("kms_state", "fact")
                if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                continue;
            }
            ("key_versions", "kcv") => {
                if !(text.len() <= 10 && text.bytes().all(|b| b.is_ascii_hexdigit())) {
                    found.push(format!(
                        "{}: a check value of {} characters",
                        cell.place(),
                        text.len()
                    ));
                }
                continue;
            }
            _ => {}
        }
        let hex_run = longest_run(text, |c| c.is_ascii_hexdigit());
        if hex_run >= 13 {
            found.push(format!("{}: {hex_run} hex digits in a row", cell.place()));
        }
        if base64_like(text) {
            found.push(format!("{}: a base64-like run", cell.place()));
        }
    }
    found
}

/// The forms a key value might take if some code wrote it as text.
pub fn encodings(secret: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let decimal = secret
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(",");
    vec![
        ("raw", secret.to_vec()),
        ("hex", hex::encode(secret).into_bytes()),
        ("base64", base64(secret).into_bytes()),
        ("decimal list", decimal.into_bytes()),
    ]
}

fn database_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_owned()];
    for suffix in ["-wal", "-journal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        files.push(PathBuf::from(p));
    }
    files.into_iter().filter(|f| f.exists()).collect()
}

async fn read_cells(path: &Path) -> Result<Vec<Cell>, sqlx::Error> {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Row};

    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .connect()
        .await?;
    let tables: Vec<String> =
        sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut conn)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();

    let mut cells = Vec::new();
    for table in tables {
        let columns: Vec<String> = sqlx::query("SELECT name FROM pragma_table_info(?1)")
            .bind(&table)
            .fetch_all(&mut conn)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for column in columns {
            let sql = format!(
                "SELECT rowid, typeof({c}), CAST({c} AS BLOB) FROM {t}",
                c = quote_ident(&column),
                t = quote_ident(&table)
            );
            for row in sqlx::query(&sql).fetch_all(&mut conn).await? {
                cells.push(Cell {
                    table: table.clone(),
                    column: column.clone(),
                    rowid: row.try_get(0)?,
                    kind: row.try_get(1)?,
                    bytes: row.try_get::<Option<Vec<u8>>, _>(2)?.unwrap_or_default(),
                });
            }
        }
    }
    Ok(cells)
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Runs a future to completion from sync or async code alike: a runtime of
/// its own on a thread of its own, since a runtime cannot be nested.
fn run_async<F>(f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = std::thread::spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(f),
            Err(e) => panic!("cannot build a runtime: {e}"),
        }
    });
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn longest_run(s: &str, pred: impl Fn(char) -> bool) -> usize {
    let mut best = 0;
    let mut cur = 0;
    for c in s.chars() {
        cur = if pred(c) { cur + 1 } else { 0 };
        best = best.max(cur);
    }
    best
}

/// 20+ characters of the base64 alphabet mixing upper case, lower case and
/// digits: a random 16-byte value encodes to 22 such characters, while names
/// and words rarely mix all three that long.
fn base64_like(s: &str) -> bool {
    s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/'))
        .any(|run| {
            run.len() >= 20
                && run.bytes().any(|b| b.is_ascii_uppercase())
                && run.bytes().any(|b| b.is_ascii_lowercase())
                && run.bytes().any(|b| b.is_ascii_digit())
        })
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    // Inside a longer encoding the last, partly filled character and the
    // padding depend on what follows; keep only the characters the value
    // alone determines.
    out.truncate(data.len() * 8 / 6);
    out
}

/// An audit record body without the fields that are hashes by design
/// (prev, hash, mac, and digests in details), for the shape heuristics.
fn strip_chain_fields(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut m)) => {
            for k in ["prev", "hash", "mac"] {
                m.remove(k);
            }
            if let Some(serde_json::Value::Object(d)) = m.get_mut("details") {
                // Hashes by design, or public card data (the KDD is sent in
                // clear), or a certificate's fingerprint.
                // Issue 5: an approval's signature and the approver's
                // public certificate.
                d.retain(|k, _| {
                    ![
                        "digest",
                        "hash",
                        "hmac",
                        "kdd",
                        "sha256",
                        "approval_signature",
                        "approver_cert",
                    ]
                    .iter()
                    .any(|w| k.contains(w))
                });
            }
            serde_json::Value::Object(m).to_string()
        }
        _ => body.to_owned(),
    }
}

/// A DER X.509 certificate's outer SEQUENCE (tag 0x30, a long-form length
/// that covers exactly the rest): enough to tell a certificate from a key.
fn x509_parser_like(der: &[u8]) -> Option<()> {
    let (&tag, rest) = der.split_first()?;
    let (&len0, rest) = rest.split_first()?;
    if tag != 0x30 || len0 & 0x80 == 0 {
        return None;
    }
    let n = usize::from(len0 & 0x7f);
    if n == 0 || n > 3 || rest.len() < n {
        return None;
    }
    let len = rest[..n]
        .iter()
        .fold(0usize, |a, &b| (a << 8) | usize::from(b));
    (len == rest.len() - n && len > 64).then_some(())
}

/// `$argon2id$v=19$m=..,t=..,p=..$salt$hash`.
fn is_argon2id_phc(s: &str) -> bool {
    let parts: Vec<&str> = s.split('$').collect();
    let b64 = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    };
    parts.len() == 6
        && parts[0].is_empty()
        && parts[1] == "argon2id"
        && parts[2] == "v=19"
        && parts[3].starts_with("m=")
        && b64(parts[4])
        && b64(parts[5])
}

/// A JSON object without the given top-level keys.
fn strip_keys(body: &str, keys: &[&str]) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut m)) => {
            for k in keys {
                m.remove(*k);
            }
            serde_json::Value::Object(m).to_string()
        }
        _ => body.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TW");
        assert_eq!(base64(b"M"), "T");
        assert_eq!(base64(b"any carnal pleas"), "YW55IGNhcm5hbCBwbGVhc");
    }

    #[test]
    fn phc_strings() {
        assert!(is_argon2id_phc(
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA"
        ));
        assert!(!is_argon2id_phc("$argon2i$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA"));
        assert!(!is_argon2id_phc("583140"));
    }

    #[test]
    fn heuristics() {
        assert!(base64_like("q83vEjRWeJq83vEjRWeJqw"));
        assert!(!base64_like("issuer-a/kmc-2026 rotated by alice"));
        assert_eq!(
            longest_run("6f1c2e4a-9b7d-4c3e-8f2a-1b2c3d4e5f60", |c| c
                .is_ascii_hexdigit()),
            12
        );
    }
}
