//! Counters for `GET /metrics`, in the Prometheus text format (written by
//! hand: a handful of counters does not justify a metrics library).
//!
//! Labels are bounded by construction: routes are the router's patterns
//! (unmatched paths count as `unmatched`), handshake failures a fixed set of
//! reasons, so a client cannot grow the series without limit.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

#[derive(Default)]
pub(crate) struct Metrics {
    /// (listener, route, status) -> requests answered.
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    /// (listener, reason) -> failed TLS handshakes.
    handshakes: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Problem code -> provisioning refusals (codes are a fixed set).
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    rejected_connections: AtomicU64,
    audit_written: AtomicU64,
    audit_failed: AtomicU64,
    handshake_audit_suppressed: AtomicU64,
}

/// Values that are not counters of this process: read when scraped.
pub(crate) struct Gauges {
    pub audit_head: Option<u64>,
    pub hsm_sessions: usize,
}

impl Metrics {
    pub(crate) fn request(&self, listener: &'static str, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        *m.entry((listener, route.to_owned(), status)).or_default() += 1;
    }

    pub(crate) fn handshake_failed(&self, listener: &'static str, reason: &'static str) {
        let mut m = self
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *m.entry((listener, reason)).or_default() += 1;
    }

    pub(crate) fn refused(&self, code: &'static str) {
        let mut m = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        *m.entry(code).or_default() += 1;
    }

    pub(crate) fn connection_rejected(&self) {
        self.rejected_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn audit_written(&self) {
        self.audit_written.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn audit_failed(&self) {
        self.audit_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake_audit_suppressed(&self) {
        self.handshake_audit_suppressed
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "kms_http_requests_total",
            "counter",
            "HTTP requests answered, by listener, route and status.",
        );
        let requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        for ((listener, route, status), n) in requests.iter() {
            let _ = writeln!(
                out,
                "kms_http_requests_total{{listener=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                label(listener),
                label(route)
            );
        }
        drop(requests);
        family(
            &mut out,
            "kms_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed, by listener and reason (no certificate, unknown issuer, expired, revoked, ...).",
        );
        let handshakes = self
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for ((listener, reason), n) in handshakes.iter() {
            let _ = writeln!(
                out,
                "kms_tls_handshake_failures_total{{listener=\"{}\",reason=\"{}\"}} {n}",
                label(listener),
                label(reason)
            );
        }
        drop(handshakes);
        family(
            &mut out,
            "kms_provisioning_refusals_total",
            "counter",
            "Provisioning requests refused, by problem code (replayed-request, rate-limited, overloaded, card-cryptogram, ...).",
        );
        let refusals = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        for (code, n) in refusals.iter() {
            let _ = writeln!(
                out,
                "kms_provisioning_refusals_total{{code=\"{}\"}} {n}",
                label(code)
            );
        }
        drop(refusals);
        let counters = [
            (
                "kms_connections_rejected_total",
                "Connections closed at once because the listener was at its connection limit.",
                &self.rejected_connections,
            ),
            (
                "kms_audit_records_written_total",
                "Audit records this server wrote.",
                &self.audit_written,
            ),
            (
                "kms_audit_write_failures_total",
                "Audit records this server could not write (their acts' results were withheld).",
                &self.audit_failed,
            ),
            (
                "kms_audit_handshake_records_suppressed_total",
                "Failed handshakes not recorded one by one because of the rate limit (counted in the next record).",
                &self.handshake_audit_suppressed,
            ),
        ];
        for (name, help, value) in counters {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        if let Some(head) = gauges.audit_head {
            family(
                &mut out,
                "kms_audit_chain_head",
                "gauge",
                "Sequence number of the last record in the audit chain.",
            );
            let _ = writeln!(out, "kms_audit_chain_head {head}");
        }
        family(
            &mut out,
            "kms_hsm_sessions_open",
            "gauge",
            "PKCS#11 sessions this process has open.",
        );
        let _ = writeln!(out, "kms_hsm_sessions_open {}", gauges.hsm_sessions);
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escape a label value as the text format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_escaped_labels() {
        let m = Metrics::default();
        m.request("admin", "/v1/audit/records", 200);
        m.request("admin", "/v1/audit/records", 200);
        m.request("admin", "we\"ird\\", 404);
        m.handshake_failed("admin", "revoked");
        m.audit_written();
        let text = m.render(&Gauges {
            audit_head: Some(7),
            hsm_sessions: 2,
        });
        assert!(text.contains(
            "kms_http_requests_total{listener=\"admin\",route=\"/v1/audit/records\",status=\"200\"} 2"
        ));
        assert!(text.contains("route=\"we\\\"ird\\\\\""));
        assert!(text
            .contains("kms_tls_handshake_failures_total{listener=\"admin\",reason=\"revoked\"} 1"));
        assert!(text.contains("kms_audit_records_written_total 1"));
        assert!(text.contains("kms_audit_chain_head 7"));
        assert!(text.contains("# TYPE kms_http_requests_total counter"));
    }
}
