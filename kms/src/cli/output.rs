//! Human and JSON output, and the mapping of errors to exit codes.

use kms::service::ServiceError;
use kms::store::KeyRecord;

pub fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(c) = super::audit::damaged_exit_code(e) {
        return c;
    }
    if let Some(s) = e.downcast_ref::<ServiceError>() {
        return match s {
            ServiceError::Inconsistent(_) => 4,
            other => other.exit_code() as u8,
        };
    }
    if e.downcast_ref::<kms::model::ParseError>().is_some()
        || e.downcast_ref::<kms::crypto::ComponentError>().is_some()
        || e.downcast_ref::<kms::crypto::KcvError>().is_some()
    {
        return 2;
    }
    1
}

/// Print, ignoring a closed pipe (`kms ... | head`): the act is done and
/// recorded by then, and a panic would only confuse the exit code.
pub fn print<T: serde::Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) {
    use std::io::Write;
    let text = if json {
        match serde_json::to_string_pretty(value) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot encode output: {e}");
                return;
            }
        }
    } else {
        human()
    };
    let _ = writeln!(std::io::stdout(), "{text}");
}

pub fn line(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{text}");
}

pub fn key_line(k: &KeyRecord) -> String {
    let cur = k.current();
    format!(
        "{:<28} {:<10} {:<14} {:<4} {:<16} kcv {:<10} {}",
        format!("{}/{}", k.tenant, k.name),
        k.algorithm.as_str(),
        k.usage.as_str(),
        cur.map(|v| format!("v{}", v.version))
            .unwrap_or_else(|| "-".into()),
        cur.map(|v| v.state.as_str()).unwrap_or("destroyed"),
        cur.and_then(|v| v.kcv.clone())
            .unwrap_or_else(|| "-".into()),
        if k.exportable { "exportable" } else { "" }
    )
}

pub fn key_detail(k: &KeyRecord) -> String {
    let mut s = format!(
        "key        {}/{}\nalgorithm  {}\nusage      {}\nexportable {}\ncreated    {} by {}\n",
        k.tenant, k.name, k.algorithm, k.usage, k.exportable, k.created_at, k.created_by
    );
    for v in &k.versions {
        s.push_str(&format!(
            "  v{:<3} {:<22} {:<10} kcv {:<10} object {}{}{}\n",
            v.version,
            v.state.as_str(),
            v.presence.as_str(),
            v.kcv.as_deref().unwrap_or("-"),
            v.object_id,
            v.expire_at
                .map(|e| format!(" expires {e}"))
                .unwrap_or_default(),
            if v.trusted { " trusted" } else { "" }
        ));
    }
    s
}
