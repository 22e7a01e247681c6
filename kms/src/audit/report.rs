//! A self-contained HTML report of an audit trail, for security officers.
//!
//! One file with no external resources: officers open it on an offline
//! workstation, attach it to an audit file or print it, and it must look the
//! same everywhere and years later. Charts are inline SVG drawn here, the CSS
//! is inline, and the one small script (timeline filter) is pinned by a
//! Content-Security-Policy hash, so even a string that slipped past escaping
//! could not run script or load anything.
//!
//! Every value taken from a record is attacker-influenced (actor names come
//! from client certificates, reasons are free text), so all of them go
//! through [`esc`], which also makes invisible and direction-changing
//! characters visible.

use super::{AuditRecord, Checkpoint, DamageKind, KeyMention, Outcome, VerifyReport};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Rows of the timeline: beyond this a browser gets slow and a printout
/// useless; the charts and the other sections still cover every record.
pub const TIMELINE_CAP: usize = 5000;
/// Rows of the refused/failed and ceremony tables (a flood of refused
/// requests must not make the page unusable).
const TABLE_CAP: usize = 5000;
/// Bars in the per-actor, per-key and per-action charts.
const TOP_N: usize = 15;
/// Characters of one value shown before it is cut: a huge attacker-chosen
/// string must not bury the rest of the page. The export keeps it whole.
const MAX_VALUE_CHARS: usize = 240;
/// Hex digits shown of hashes and signatures: enough to compare by eye
/// against another copy, short enough to read.
const PREFIX_CHARS: usize = 16;
/// At most this many bars in the activity chart; a wider span gets a
/// coarser bucket.
const MAX_BUCKETS: i64 = 200;

/// Renders the whole report. `generated_at` is shown as given (the caller
/// knows its clock); `verification` is the result of verifying exactly
/// `records` and `checkpoints`, and the page says so when its counts differ.
pub fn render_html(
    title: &str,
    records: &[AuditRecord],
    checkpoints: &[Checkpoint],
    verification: &VerifyReport,
    generated_at: &str,
) -> String {
    let mut page = Page::default();
    let shown_from = records.len().saturating_sub(TIMELINE_CAP);
    let shown_seqs: HashSet<u64> = records[shown_from..].iter().map(|r| r.seq).collect();
    let damaged: HashSet<u64> = verification.damage.iter().map(|d| d.seq).collect();

    page.head(title);
    page.push("<div class=\"wrap\">");
    header(
        &mut page,
        title,
        records,
        checkpoints,
        verification,
        generated_at,
        &shown_seqs,
    );
    let groups = ceremony_groups(records);
    let problems: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| matches!(r.event.outcome, Some(Outcome::Refused | Outcome::Failure)))
        .collect();
    toc(
        &mut page,
        problems.len(),
        groups.len(),
        records.len(),
        checkpoints.len(),
    );
    charts(&mut page, records);
    refused_section(&mut page, &problems);
    ceremonies_section(&mut page, &groups);
    timeline_section(&mut page, records, shown_from, &damaged);
    checkpoints_section(&mut page, checkpoints);
    page.push(
        "<footer>Hashes and signatures are shown as prefixes; record MACs are not shown. \
         Values longer than a few lines are cut here and whole in the export. \
         Invisible and direction-changing characters in values are shown as \
         \u{2039}U+XXXX\u{203A}.</footer>",
    );
    page.push("</div>");
    page.tail();
    page.html
}

// ---------------------------------------------------------------------------
// Escaping and small formatting helpers

/// HTML-escapes `s` for text and quoted attribute values, and shows
/// control, invisible and bidi-override characters as `‹U+XXXX›`: without
/// that, a right-to-left override could make one actor's name read as
/// another's, and a zero-width space could make two names look equal.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if hidden_char(c) => {
                out.push_str(&format!("\u{2039}U+{:04X}\u{203A}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

fn hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// Escapes `s`, cut to `max` characters with a note of how much was cut.
fn clip_to(s: &str, max: usize) -> String {
    let total = s.chars().count();
    if total <= max {
        return esc(s);
    }
    let head: String = s.chars().take(max).collect();
    format!(
        "{}<span class=\"cut\">\u{2026} (+{} chars)</span>",
        esc(&head),
        total - max
    )
}

fn clip(s: &str) -> String {
    clip_to(s, MAX_VALUE_CHARS)
}

/// A short label for a chart axis, escaped; the full value goes in the
/// bar's `<title>`.
fn short_label(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        esc(s)
    } else {
        let head: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{}\u{2026}", esc(&head))
    }
}

fn prefix(s: &str) -> String {
    let p: String = s.chars().take(PREFIX_CHARS).collect();
    if s.chars().count() > PREFIX_CHARS {
        format!("{}\u{2026}", esc(&p))
    } else {
        esc(&p)
    }
}

/// An action name that may wrap after its dots rather than mid-word.
fn action_html(action: &str) -> String {
    clip(action).replace('.', ".<wbr>")
}

/// A timestamp that may wrap between date and time on a narrow page.
fn time_html(at: &str) -> String {
    clip(at).replacen('T', "T<wbr>", 1)
}

fn opt(s: &Option<String>) -> String {
    s.as_deref().map(clip).unwrap_or_default()
}

fn key_text(k: &KeyMention) -> String {
    let mut s = format!("{}/{}", k.tenant, k.name);
    if let Some(v) = k.version {
        s.push_str(&format!(" v{v}"));
    }
    if let Some(kcv) = &k.kcv {
        s.push_str(&format!(" ({kcv})"));
    }
    s
}

fn keys_cell(keys: &[KeyMention]) -> String {
    keys.iter()
        // Wrap after the tenant rather than inside a name.
        .map(|k| clip(&key_text(k)).replacen('/', "/<wbr>", 1))
        .collect::<Vec<_>>()
        .join("<br>")
}

fn outcome_name(o: Option<Outcome>) -> &'static str {
    o.map(Outcome::as_str).unwrap_or("none")
}

fn outcome_badge(o: Option<Outcome>) -> String {
    let n = outcome_name(o);
    format!("<span class=\"badge o-{n}\">{n}</span>")
}

fn details_text(r: &AuditRecord) -> String {
    r.event
        .details
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn parse_at(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|t| t.to_offset(time::UtcOffset::UTC))
}

fn fmt_utc(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn damage_kind(k: DamageKind) -> (&'static str, &'static str) {
    match k {
        DamageKind::Changed => ("changed", "content does not match its hash"),
        DamageKind::Deleted => ("deleted", "records missing: a gap in the sequence"),
        DamageKind::Inserted => ("inserted", "a record that does not belong to the chain"),
        DamageKind::Reordered => ("reordered", "records out of sequence order"),
        DamageKind::TruncatedTail => (
            "truncated-tail",
            "the chain ends before a checkpoint or the head says it did",
        ),
        DamageKind::BadSignature => (
            "bad-signature",
            "a checkpoint signature does not verify or names the wrong hash",
        ),
        DamageKind::BadMac => ("bad-mac", "the HSM MAC of the record does not verify"),
    }
}

/// Standard base64, for the CSP hashes; kept here rather than adding a
/// dependency for twenty lines.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn csp_hash(text: &str) -> String {
    format!("'sha256-{}'", base64(&Sha256::digest(text.as_bytes())))
}

// ---------------------------------------------------------------------------
// Page skeleton

#[derive(Default)]
struct Page {
    html: String,
}

impl Page {
    fn push(&mut self, s: &str) {
        self.html.push_str(s);
    }

    fn head(&mut self, title: &str) {
        let csp = format!(
            "default-src 'none'; style-src {}; script-src {}; img-src 'none'; \
             base-uri 'none'; form-action 'none'",
            csp_hash(STYLE),
            csp_hash(SCRIPT)
        );
        self.push("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
        self.push(&format!(
            "<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">"
        ));
        self.push("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
        self.push("<meta name=\"color-scheme\" content=\"light\">");
        self.push(&format!("<title>{}</title>", clip(title)));
        self.push(&format!("<style>{STYLE}</style></head><body>"));
    }

    fn tail(&mut self) {
        self.push(&format!("<script>{SCRIPT}</script></body></html>\n"));
    }
}

fn header(
    page: &mut Page,
    title: &str,
    records: &[AuditRecord],
    checkpoints: &[Checkpoint],
    v: &VerifyReport,
    generated_at: &str,
    shown_seqs: &HashSet<u64>,
) {
    page.push("<header class=\"top\"><div class=\"titlebar\">");
    page.push(&format!("<h1>{}</h1>", clip(title)));
    page.push(&format!(
        "<div class=\"gen\">Audit trail report \u{b7} generated {}</div></div>",
        clip(generated_at)
    ));

    let ok = v.ok();
    page.push(&format!(
        "<div class=\"status {}\" id=\"status\"><div class=\"big\">{}</div><div class=\"sub\">",
        if ok { "ok" } else { "bad" },
        if ok {
            "VERIFIED".to_string()
        } else {
            format!(
                "DAMAGED \u{2014} {} finding{}",
                v.damage.len(),
                if v.damage.len() == 1 { "" } else { "s" }
            )
        }
    ));
    let mut facts = vec![format!(
        "{} record{} verified",
        v.records,
        if v.records == 1 { "" } else { "s" }
    )];
    if let (Some(a), Some(b)) = (v.first_seq, v.last_seq) {
        facts.push(format!("seq {a}\u{2013}{b}"));
    }
    facts.push(format!(
        "{} of {} checkpoint signatures verified",
        v.checkpoints_verified, v.checkpoints
    ));
    if v.macs_verified == 0 {
        facts.push("record MACs not checked (offline verification)".into());
    } else {
        facts.push(format!("{} record MACs verified", v.macs_verified));
    }
    page.push(&esc(&facts.join(" \u{b7} ")));
    page.push("</div>");
    if v.records != records.len() as u64 || v.checkpoints != checkpoints.len() as u64 {
        page.push(&format!(
            "<div class=\"warn\">Caution: the verification covered {} records and {} checkpoints, \
             this report shows {} and {}. It was not produced from the same extract.</div>",
            v.records,
            v.checkpoints,
            records.len(),
            checkpoints.len()
        ));
    }
    page.push("</div>");

    // Facts about what the page shows.
    let times: Vec<OffsetDateTime> = records.iter().filter_map(|r| parse_at(&r.at)).collect();
    let seq_min = records.iter().map(|r| r.seq).min();
    let seq_max = records.iter().map(|r| r.seq).max();
    let nodes: BTreeSet<&str> = records.iter().map(|r| r.node.as_str()).collect();
    let actors: BTreeSet<&str> = records.iter().map(|r| r.event.actor.as_str()).collect();
    let tenants: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r.event.tenant.as_deref())
        .collect();
    page.push("<dl class=\"facts\">");
    let mut fact = |k: &str, v: String| {
        // The time range is the one long value: give it room to stay on a line.
        let class = if k.starts_with("Time") {
            " class=\"span2\""
        } else {
            ""
        };
        page.push(&format!("<div{class}><dt>{k}</dt><dd>{v}</dd></div>"));
    };
    fact("Records", records.len().to_string());
    fact(
        "Sequence",
        match (seq_min, seq_max) {
            (Some(a), Some(b)) => format!("{a} \u{2013} {b}"),
            _ => "\u{2014}".into(),
        },
    );
    fact(
        "Time range (UTC)",
        match (times.iter().min(), times.iter().max()) {
            (Some(a), Some(b)) => format!(
                "<span class=\"nw\">{}</span> \u{2013} <span class=\"nw\">{}</span>",
                fmt_utc(*a),
                fmt_utc(*b)
            ),
            _ => "\u{2014}".into(),
        },
    );
    fact(
        "Nodes",
        if nodes.is_empty() {
            "\u{2014}".into()
        } else {
            clip(&nodes.into_iter().collect::<Vec<_>>().join(", "))
        },
    );
    fact("Actors", actors.len().to_string());
    fact("Tenants", tenants.len().to_string());
    fact("Checkpoints", checkpoints.len().to_string());
    page.push("</dl>");

    if !v.damage.is_empty() {
        page.push("<section id=\"damage\"><h2>Damage found</h2>");
        page.push(&table_head(
            "damage",
            &[("Kind", 22), ("Seq", 8), ("Detail", 70)],
        ));
        for d in &v.damage {
            let (kind, meaning) = damage_kind(d.kind);
            let seq = if shown_seqs.contains(&d.seq) {
                format!("<a href=\"#r{0}\">{0}</a>", d.seq)
            } else {
                d.seq.to_string()
            };
            page.push(&format!(
                "<tr><td><strong>{kind}</strong><div class=\"muted\">{meaning}</div></td>\
                 <td class=\"num\">{seq}</td><td>{}</td></tr>",
                clip(&d.detail)
            ));
        }
        page.push("</tbody></table></section>");
    }
    page.push("</header>");
}

fn toc(page: &mut Page, problems: usize, groups: usize, records: usize, checkpoints: usize) {
    page.push(&format!(
        "<nav class=\"toc\"><a href=\"#charts\">Activity</a>\
         <a href=\"#refused\">Refused and failed ({problems})</a>\
         <a href=\"#ceremonies\">Ceremonies and approvals ({groups})</a>\
         <a href=\"#timeline\">Timeline ({records})</a>\
         <a href=\"#checkpoints\">Checkpoints ({checkpoints})</a></nav>"
    ));
}

/// A table with fixed column widths (percent): with automatic layout a
/// long attacker-chosen value decides the columns, and browsers do not let
/// `overflow-wrap:anywhere` shrink a table column below its longest word.
fn table_head(class: &str, cols: &[(&str, u32)]) -> String {
    let mut s = format!("<table class=\"grid {class}\"><thead><tr>");
    for (label, width) in cols {
        s.push_str(&format!("<th class=\"w{width}\">{label}</th>"));
    }
    s.push_str("</tr></thead><tbody>");
    s
}

fn empty_note(page: &mut Page, what: &str) {
    page.push(&format!("<p class=\"empty\">{what}</p>"));
}

fn cap_note(page: &mut Page, shown: usize, total: usize, what: &str) {
    if shown < total {
        page.push(&format!(
            "<p class=\"warn\">Showing {shown} of {total} {what}; the export has all of them.</p>"
        ));
    }
}

// ---------------------------------------------------------------------------
// Tables

fn refused_section(page: &mut Page, problems: &[&AuditRecord]) {
    page.push("<section id=\"refused\"><h2>Refused and failed acts</h2>");
    if problems.is_empty() {
        empty_note(page, "No act was refused or failed.");
        page.push("</section>");
        return;
    }
    cap_note(
        page,
        problems.len().min(TABLE_CAP),
        problems.len(),
        "refused or failed acts",
    );
    page.push(&table_head(
        "problems",
        &[
            ("Seq", 5),
            ("Time", 14),
            ("Actor", 11),
            ("Role", 8),
            ("Action", 11),
            ("Keys", 15),
            ("Outcome", 7),
            ("Reason", 19),
            ("Request", 10),
        ],
    ));
    for r in problems.iter().take(TABLE_CAP) {
        let e = &r.event;
        page.push(&format!(
            "<tr><td class=\"num\">{}</td><td class=\"t\">{}</td><td>{}</td><td>{}</td>\
             <td class=\"act\">{}</td><td class=\"keys\">{}</td><td>{}</td><td>{}</td><td class=\"id\">{}</td></tr>",
            r.seq,
            time_html(&r.at),
            clip(&e.actor),
            clip(&e.role),
            action_html(&e.action),
            keys_cell(&e.keys),
            outcome_badge(e.outcome),
            opt(&e.reason),
            opt(&e.request_id)
        ));
    }
    page.push("</tbody></table></section>");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Request,
    Approve,
    Execute,
    Other,
}

/// Classifies a `request.*` / `ceremony.*` action by its last segment, so
/// new verbs land in a sensible column rather than nowhere.
fn step_of(action: &str) -> Step {
    let verb = action.rsplit('.').next().unwrap_or(action);
    match verb {
        "request" | "create" | "open" | "start" | "submit" | "begin" | "new" => Step::Request,
        v if v.starts_with("approv") => Step::Approve,
        "execute" | "run" | "complete" | "finish" | "close" => Step::Execute,
        _ => Step::Other,
    }
}

fn is_ceremonial(action: &str) -> bool {
    action.starts_with("ceremony.") || action.starts_with("request.")
}

/// Records of one request (or one ceremony), in chain order.
#[derive(Debug)]
struct Group<'a> {
    request_id: Option<&'a str>,
    records: Vec<&'a AuditRecord>,
}

/// Groups ceremony and request records by request id, in order of first
/// appearance. A record without an id is a group of its own: lumping
/// unrelated acts together would suggest they belong to one decision.
fn ceremony_groups(records: &[AuditRecord]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for r in records.iter().filter(|r| is_ceremonial(&r.event.action)) {
        match r.event.request_id.as_deref() {
            Some(id) => {
                if let Some(&i) = index.get(id) {
                    groups[i].records.push(r);
                } else {
                    index.insert(id, groups.len());
                    groups.push(Group {
                        request_id: Some(id),
                        records: vec![r],
                    });
                }
            }
            None => groups.push(Group {
                request_id: None,
                records: vec![r],
            }),
        }
    }
    groups
}

/// Who did each part of a group, and how it ended.
#[derive(Debug, Default)]
struct GroupSummary {
    requested: Vec<String>,
    approved: Vec<String>,
    refused_approvals: Vec<String>,
    executed: Vec<String>,
    outcome: &'static str,
    self_approved: bool,
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

fn summarize(g: &Group<'_>) -> GroupSummary {
    let mut s = GroupSummary::default();
    let mut executed_outcome: Option<Outcome> = None;
    let mut last_bad: Option<Outcome> = None;
    for r in &g.records {
        let e = &r.event;
        let refused = matches!(e.outcome, Some(Outcome::Refused | Outcome::Failure));
        match step_of(&e.action) {
            Step::Request if !refused => push_unique(&mut s.requested, &e.actor),
            Step::Approve if refused => push_unique(&mut s.refused_approvals, &e.actor),
            Step::Approve if e.outcome != Some(Outcome::Attempt) => {
                push_unique(&mut s.approved, &e.actor)
            }
            Step::Execute => {
                if !refused {
                    push_unique(&mut s.executed, &e.actor);
                }
                if e.outcome != Some(Outcome::Attempt) {
                    executed_outcome = e.outcome;
                }
            }
            _ => {}
        }
        if refused {
            last_bad = e.outcome;
        }
    }
    s.self_approved = s.approved.iter().any(|a| s.requested.contains(a));
    s.outcome = match (executed_outcome, last_bad) {
        (Some(o), _) => o.as_str(),
        (None, Some(o)) => o.as_str(),
        (None, None) if !s.executed.is_empty() => "attempt",
        (None, None) => "not executed",
    };
    s
}

fn names(v: &[String]) -> String {
    if v.is_empty() {
        "<span class=\"muted\">\u{2014}</span>".into()
    } else {
        v.iter().map(|s| clip(s)).collect::<Vec<_>>().join("<br>")
    }
}

fn ceremonies_section(page: &mut Page, groups: &[Group<'_>]) {
    page.push(
        "<section id=\"ceremonies\"><h2>Ceremonies and approvals</h2>\
         <p class=\"lead\">Every <code>request.*</code> and <code>ceremony.*</code> record, grouped by request id.</p>",
    );
    if groups.is_empty() {
        empty_note(page, "No ceremony or approval was recorded.");
        page.push("</section>");
        return;
    }
    cap_note(page, groups.len().min(TABLE_CAP), groups.len(), "requests");
    page.push(&table_head(
        "cer",
        &[
            ("Request", 10),
            ("Operation", 16),
            ("Requested by", 9),
            ("Approved by", 12),
            ("Executed by", 9),
            ("Outcome", 9),
            ("Steps", 35),
        ],
    ));
    for g in groups.iter().take(TABLE_CAP) {
        let s = summarize(g);
        let id = match g.request_id {
            Some(id) => clip(id),
            None => "<span class=\"muted\">(no request id)</span>".into(),
        };
        // What was decided: the operation's keys and any `op` detail.
        let mut keys: Vec<String> = Vec::new();
        let mut ops: Vec<String> = Vec::new();
        for r in &g.records {
            for k in &r.event.keys {
                push_unique(&mut keys, &key_text(k));
            }
            if let Some(op) = r.event.details.get("op") {
                push_unique(&mut ops, op);
            }
        }
        let mut what = ops.iter().map(|o| clip(o)).collect::<Vec<_>>().join(", ");
        if !keys.is_empty() {
            if !what.is_empty() {
                what.push_str("<br>");
            }
            what.push_str(
                &keys
                    .iter()
                    .map(|k| clip(k))
                    .collect::<Vec<_>>()
                    .join("<br>"),
            );
        }
        let mut approved = names(&s.approved);
        if !s.refused_approvals.is_empty() {
            approved.push_str(&format!(
                "<div class=\"muted\">refused: {}</div>",
                s.refused_approvals
                    .iter()
                    .map(|a| clip(a))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if s.self_approved {
            approved.push_str("<div class=\"flag\">\u{26a0} approved by its requester</div>");
        }
        let steps = g
            .records
            .iter()
            .map(|r| {
                format!(
                    "<li><span class=\"num\">#{}</span> {} <span class=\"t\">{}</span> <b>{}</b> {}</li>",
                    r.seq,
                    outcome_badge(r.event.outcome),
                    clip(&r.at),
                    clip(&r.event.actor),
                    clip(&r.event.action)
                )
            })
            .collect::<String>();
        let outcome_class = match s.outcome {
            "not executed" => "none",
            o => o,
        };
        page.push(&format!(
            "<tr><td class=\"id\">{id}</td><td class=\"keys\">{what}</td><td>{}</td><td>{approved}</td>\
             <td>{}</td><td><span class=\"badge o-{outcome_class}\">{}</span></td>\
             <td><ul class=\"steps\">{steps}</ul></td></tr>",
            names(&s.requested),
            names(&s.executed),
            s.outcome
        ));
    }
    page.push("</tbody></table></section>");
}

fn timeline_section(
    page: &mut Page,
    records: &[AuditRecord],
    shown_from: usize,
    damaged: &HashSet<u64>,
) {
    page.push("<section id=\"timeline\"><h2>Timeline</h2>");
    if records.is_empty() {
        empty_note(page, "The trail holds no records.");
        page.push("</section>");
        return;
    }
    if shown_from > 0 {
        page.push(&format!(
            "<p class=\"warn\">Showing the newest {} of {} records; the {} oldest are left out here \
             (the charts and the sections above cover all of them; the export has every record).</p>",
            records.len() - shown_from,
            records.len(),
            shown_from
        ));
    }
    page.push(
        "<div class=\"filter\"><label for=\"q\">Filter rows</label> \
         <input id=\"q\" type=\"search\" placeholder=\"actor, action, key, request id\u{2026}\" autocomplete=\"off\"> \
         <span id=\"qn\" class=\"muted\"></span></div>",
    );
    page.push(&table_head(
        "tl",
        &[
            ("Seq", 5),
            ("Time", 14),
            ("Actor", 11),
            ("Role", 8),
            ("Tenant", 7),
            ("Action", 12),
            ("Keys", 15),
            ("Outcome", 7),
            ("Reason", 11),
            ("Request", 10),
        ],
    ));
    for r in &records[shown_from..] {
        let e = &r.event;
        let dmg = damaged.contains(&r.seq);
        let details = details_text(r);
        let details = if details.is_empty() {
            String::new()
        } else {
            format!("<div class=\"det\">{}</div>", clip(&details))
        };
        page.push(&format!(
            "<tr id=\"r{seq}\"{cls}><td class=\"num\">{seq}{mark}</td><td class=\"t\">{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td class=\"act\">{}{details}</td><td class=\"keys\">{}</td>\
             <td>{}</td><td>{}</td><td class=\"id\">{}</td></tr>",
            time_html(&r.at),
            clip(&e.actor),
            clip(&e.role),
            opt(&e.tenant),
            action_html(&e.action),
            keys_cell(&e.keys),
            outcome_badge(e.outcome),
            opt(&e.reason),
            opt(&e.request_id),
            seq = r.seq,
            cls = if dmg { " class=\"dmg\"" } else { "" },
            mark = if dmg {
                " <span class=\"flag\" title=\"damage found here\">\u{26a0}</span>"
            } else {
                ""
            },
        ));
    }
    page.push("</tbody></table></section>");
}

fn checkpoints_section(page: &mut Page, checkpoints: &[Checkpoint]) {
    page.push("<section id=\"checkpoints\"><h2>Signed checkpoints</h2>");
    if checkpoints.is_empty() {
        empty_note(page, "No checkpoint was signed.");
        page.push("</section>");
        return;
    }
    page.push(&table_head(
        "cp",
        &[
            ("Seq", 10),
            ("Time", 22),
            ("Node", 18),
            ("Chain hash", 25),
            ("Signature", 25),
        ],
    ));
    for c in checkpoints {
        page.push(&format!(
            "<tr><td class=\"num\">{}</td><td class=\"t\">{}</td><td>{}</td><td class=\"id\">{}</td>\
             <td class=\"id\">{}</td></tr>",
            c.seq,
            time_html(&c.at),
            clip(&c.node),
            prefix(&c.hash),
            prefix(&c.signature)
        ));
    }
    page.push("</tbody></table></section>");
}

// ---------------------------------------------------------------------------
// Charts

/// Outcome classes in stacking order, bottom first.
const CLASSES: [(Option<Outcome>, &str); 5] = [
    (Some(Outcome::Success), "success"),
    (Some(Outcome::Attempt), "attempt"),
    (Some(Outcome::Refused), "refused"),
    (Some(Outcome::Failure), "failure"),
    (None, "none"),
];

fn class_index(o: Option<Outcome>) -> usize {
    match o {
        Some(Outcome::Success) => 0,
        Some(Outcome::Attempt) => 1,
        Some(Outcome::Refused) => 2,
        Some(Outcome::Failure) => 3,
        None => 4,
    }
}

type Counts = [u64; 5];

fn total(c: &Counts) -> u64 {
    c.iter().sum()
}

fn breakdown(c: &Counts) -> String {
    CLASSES
        .iter()
        .zip(c)
        .filter(|(_, n)| **n > 0)
        .map(|((_, name), n)| format!("{n} {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn svg_open(id: &str, w: u32, h: u32, title: &str, desc: &str) -> String {
    format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" \
         role=\"img\" aria-labelledby=\"{id}-t {id}-d\" id=\"{id}\"><title id=\"{id}-t\">{}</title>\
         <desc id=\"{id}-d\">{}</desc>",
        esc(title),
        esc(desc)
    )
}

/// A round axis maximum and step for `max`, so gridlines read 0, 5, 10...
fn nice_scale(max: u64) -> (u64, u64) {
    if max == 0 {
        return (1, 1);
    }
    let raw = max.div_ceil(4).max(1);
    let mut mag = 1u64;
    while mag.saturating_mul(10) <= raw {
        mag = mag.saturating_mul(10);
    }
    let step = [1u64, 2, 5, 10]
        .iter()
        .map(|m| m.saturating_mul(mag))
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    (max.div_ceil(step).saturating_mul(step), step)
}

fn legend(x: f64, y: f64, present: &[usize]) -> String {
    let mut s = String::new();
    let mut cx = x;
    for &i in present {
        let name = CLASSES[i].1;
        s.push_str(&format!(
            "<rect class=\"o-{name}\" x=\"{cx:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" rx=\"2\"/>\
             <text class=\"lg\" x=\"{:.1}\" y=\"{:.1}\">{name}</text>",
            y - 9.0,
            cx + 14.0,
            y
        ));
        cx += 14.0 + 7.0 * name.len() as f64 + 14.0;
    }
    s
}

fn legend_width(present: &[usize]) -> f64 {
    present
        .iter()
        .map(|&i| 28.0 + 7.0 * CLASSES[i].1.len() as f64)
        .sum()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    fn index(self, t: OffsetDateTime) -> i64 {
        let ts = t.unix_timestamp();
        match self {
            Unit::Hour => ts.div_euclid(3600),
            Unit::Day => ts.div_euclid(86_400),
            // 1970-01-01 was a Thursday; weeks start on Monday.
            Unit::Week => (ts.div_euclid(86_400) + 3).div_euclid(7),
            Unit::Month => i64::from(t.year()) * 12 + i64::from(u8::from(t.month())) - 1,
            Unit::Year => i64::from(t.year()),
        }
    }

    /// The bucket's label, and a longer form for its tooltip.
    fn label(self, idx: i64) -> (String, String) {
        let at = |secs: i64| OffsetDateTime::from_unix_timestamp(secs).ok();
        match self {
            Unit::Hour => match at(idx.saturating_mul(3600)) {
                Some(t) => (
                    format!("{:02}-{:02} {:02}h", u8::from(t.month()), t.day(), t.hour()),
                    format!(
                        "{:04}-{:02}-{:02} {:02}:00\u{2013}{:02}:00 UTC",
                        t.year(),
                        u8::from(t.month()),
                        t.day(),
                        t.hour(),
                        (t.hour() + 1) % 24
                    ),
                ),
                None => (idx.to_string(), idx.to_string()),
            },
            Unit::Day | Unit::Week => {
                let day = if self == Unit::Day { idx } else { idx * 7 - 3 };
                match at(day.saturating_mul(86_400)) {
                    Some(t) => {
                        let d =
                            format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day());
                        let long = if self == Unit::Day {
                            format!("{d} UTC")
                        } else {
                            format!("week of {d}")
                        };
                        (d, long)
                    }
                    None => (idx.to_string(), idx.to_string()),
                }
            }
            Unit::Month => {
                let m = format!("{:04}-{:02}", idx.div_euclid(12), idx.rem_euclid(12) + 1);
                (m.clone(), m)
            }
            Unit::Year => (idx.to_string(), idx.to_string()),
        }
    }
}

/// The finest bucket that keeps the chart to at most `MAX_BUCKETS` bars.
fn choose_unit(first: OffsetDateTime, last: OffsetDateTime) -> Option<Unit> {
    let span = last - first;
    let preferred = if span <= time::Duration::hours(72) {
        Unit::Hour
    } else if span <= time::Duration::days(180) {
        Unit::Day
    } else {
        Unit::Week
    };
    [Unit::Hour, Unit::Day, Unit::Week, Unit::Month, Unit::Year]
        .into_iter()
        .skip_while(|u| *u != preferred)
        .find(|u| u.index(last) - u.index(first) < MAX_BUCKETS)
}

fn charts(page: &mut Page, records: &[AuditRecord]) {
    page.push("<section id=\"charts\"><h2>Activity</h2>");
    if records.is_empty() {
        empty_note(page, "Nothing to chart: the trail holds no records.");
        page.push("</section>");
        return;
    }
    page.push("<div class=\"card wide\">");
    page.push(&activity_chart(records));
    page.push("</div><div class=\"grid2\"><div class=\"card\">");
    // As tall as the action chart beside it, so the two cards line up.
    let actions: HashSet<&str> = records.iter().map(|r| r.event.action.as_str()).collect();
    page.push(&outcome_chart(
        records,
        top_chart_height(actions.len()).max(260.0),
    ));
    page.push("</div><div class=\"card\">");
    page.push(&top_chart(
        "c-actions",
        "Activity per action",
        "action",
        records,
        |r| vec![r.event.action.clone()],
    ));
    page.push("</div><div class=\"card\">");
    page.push(&top_chart(
        "c-actors",
        "Activity per actor",
        "actor",
        records,
        |r| vec![r.event.actor.clone()],
    ));
    page.push("</div><div class=\"card\">");
    page.push(&top_chart(
        "c-keys",
        "Activity per key",
        "key",
        records,
        |r| {
            let mut ks: Vec<String> = r
                .event
                .keys
                .iter()
                .map(|k| format!("{}/{}", k.tenant, k.name))
                .collect();
            ks.sort();
            ks.dedup();
            ks
        },
    ));
    page.push("</div></div></section>");
}

fn activity_chart(records: &[AuditRecord]) -> String {
    let times: Vec<(OffsetDateTime, Option<Outcome>)> = records
        .iter()
        .filter_map(|r| parse_at(&r.at).map(|t| (t, r.event.outcome)))
        .collect();
    let unparsed = records.len() - times.len();
    let (first, last) = match (
        times.iter().map(|t| t.0).min(),
        times.iter().map(|t| t.0).max(),
    ) {
        (Some(a), Some(b)) => (a, b),
        _ => {
            return format!(
                "{}<text class=\"lbl\" x=\"20\" y=\"40\">No record has a readable time ({} records).</text></svg>",
                svg_open("c-activity", 1100, 80, "Activity over time", "no readable times"),
                unparsed
            )
        }
    };
    let Some(unit) = choose_unit(first, last) else {
        return format!(
            "{}<text class=\"lbl\" x=\"20\" y=\"40\">The records span {} to {}: too wide to chart. \
             Check for records with implausible times.</text></svg>",
            svg_open("c-activity", 1100, 80, "Activity over time", "span too wide"),
            esc(&fmt_utc(first)),
            esc(&fmt_utc(last))
        );
    };
    let lo = unit.index(first);
    let n = usize::try_from(unit.index(last) - lo + 1).unwrap_or(1);
    let mut buckets: Vec<Counts> = vec![[0; 5]; n];
    for (t, o) in &times {
        let i = usize::try_from(unit.index(*t) - lo).unwrap_or(0);
        if let Some(b) = buckets.get_mut(i) {
            b[class_index(*o)] += 1;
        }
    }
    let mut sums: Counts = [0; 5];
    for b in &buckets {
        for (s, v) in sums.iter_mut().zip(b) {
            *s += v;
        }
    }
    let present: Vec<usize> = (0..5).filter(|i| sums[*i] > 0).collect();
    let max = buckets.iter().map(total).max().unwrap_or(0);
    let (ymax, step) = nice_scale(max);

    let (w, h) = (1100.0_f64, 300.0_f64);
    let (ml, mr, mt, mb) = (46.0, 12.0, 34.0, 44.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let bw = pw / n as f64;
    let gap = if bw > 6.0 { bw * 0.18 } else { 0.0 };
    let y = |v: u64| mt + ph - ph * (v as f64) / (ymax as f64);

    let title = format!("Activity over time (records per {})", unit.name());
    let desc = format!(
        "{} records from {} to {}, in {} buckets of one {}; busiest bucket {} records",
        times.len(),
        fmt_utc(first),
        fmt_utc(last),
        n,
        unit.name(),
        max
    );
    let mut s = svg_open("c-activity", w as u32, h as u32, &title, &desc);
    s.push_str(&format!(
        "<text class=\"ct\" x=\"{ml}\" y=\"18\">{}</text>",
        esc(&title)
    ));
    s.push_str(&legend(w - mr - legend_width(&present), 18.0, &present));
    // Gridlines and y labels.
    let mut v = 0;
    while v <= ymax {
        let yy = y(v);
        s.push_str(&format!(
            "<line class=\"gl\" x1=\"{ml}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/>\
             <text class=\"ax\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text>",
            w - mr,
            ml - 6.0,
            yy + 4.0
        ));
        v += step;
    }
    let label_every = n.div_ceil(12).max(1);
    // Label every bar while the labels fit above it.
    let label_bars = bw >= 14.0;
    for (i, b) in buckets.iter().enumerate() {
        let x = ml + bw * i as f64;
        let (short, long) = unit.label(lo + i as i64);
        let t = total(b);
        s.push_str(&format!(
            "<g><title>{}: {} record{}{}</title>",
            esc(&long),
            t,
            if t == 1 { "" } else { "s" },
            if t > 0 {
                format!(" ({})", breakdown(b))
            } else {
                String::new()
            }
        ));
        // A full-height transparent target so the tooltip works on empty
        // and thin bars too.
        s.push_str(&format!(
            "<rect class=\"hit\" x=\"{x:.1}\" y=\"{mt}\" width=\"{bw:.1}\" height=\"{ph:.1}\"/>"
        ));
        let mut acc = 0u64;
        for (ci, &c) in b.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let y1 = y(acc + c);
            let y0 = y(acc);
            s.push_str(&format!(
                "<rect class=\"o-{}\" x=\"{:.1}\" y=\"{y1:.1}\" width=\"{:.1}\" height=\"{:.1}\"/>",
                CLASSES[ci].1,
                x + gap / 2.0,
                (bw - gap).max(0.5),
                (y0 - y1).max(0.0)
            ));
            acc += c;
        }
        if t > 0 && (label_bars || t == max) {
            s.push_str(&format!(
                "<text class=\"dl\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t}</text>",
                x + bw / 2.0,
                y(t) - 4.0
            ));
        }
        s.push_str("</g>");
        if i % label_every == 0 {
            s.push_str(&format!(
                "<line class=\"tick\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\"/>\
                 <text class=\"ax\" x=\"{0:.1}\" y=\"{3:.1}\" text-anchor=\"middle\">{4}</text>",
                x + bw / 2.0,
                mt + ph,
                mt + ph + 4.0,
                mt + ph + 18.0,
                esc(&short)
            ));
        }
    }
    s.push_str(&format!(
        "<line class=\"axis\" x1=\"{ml}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>",
        w - mr,
        mt + ph,
        mt + ph
    ));
    let note = if unparsed > 0 {
        format!(
            " \u{b7} {unparsed} record{} with an unreadable time not charted",
            if unparsed == 1 { "" } else { "s" }
        )
    } else {
        String::new()
    };
    s.push_str(&format!(
        "<text class=\"ax\" x=\"{ml}\" y=\"{:.1}\">UTC, one bar per {}{}</text></svg>",
        h - 6.0,
        unit.name(),
        note
    ));
    s
}

fn outcome_chart(records: &[AuditRecord], h: f64) -> String {
    let mut counts: Counts = [0; 5];
    for r in records {
        counts[class_index(r.event.outcome)] += 1;
    }
    // The four outcomes always, so "0 refused" is stated, not implied.
    let shown: Vec<usize> = (0..5).filter(|i| *i < 4 || counts[*i] > 0).collect();
    let all = records.len().max(1) as f64;
    let max = counts.iter().copied().max().unwrap_or(0);
    let (ymax, step) = nice_scale(max);
    let w = 540.0_f64;
    let (ml, mr, mt, mb) = (46.0, 12.0, 40.0, 44.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let slot = pw / shown.len() as f64;
    let bw = (slot * 0.6).min(80.0);
    let y = |v: u64| mt + ph - ph * (v as f64) / (ymax as f64);
    let desc = shown
        .iter()
        .map(|&i| format!("{} {}", counts[i], CLASSES[i].1))
        .collect::<Vec<_>>()
        .join(", ");
    let mut s = svg_open("c-outcomes", w as u32, h as u32, "Outcomes", &desc);
    s.push_str(&format!(
        "<text class=\"ct\" x=\"{ml}\" y=\"18\">Outcomes</text>"
    ));
    let mut v = 0;
    while v <= ymax {
        let yy = y(v);
        s.push_str(&format!(
            "<line class=\"gl\" x1=\"{ml}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/>\
             <text class=\"ax\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text>",
            w - mr,
            ml - 6.0,
            yy + 4.0
        ));
        v += step;
    }
    for (k, &i) in shown.iter().enumerate() {
        let c = counts[i];
        let name = CLASSES[i].1;
        let cx = ml + slot * (k as f64 + 0.5);
        let pct = 100.0 * c as f64 / all;
        s.push_str(&format!(
            "<g><title>{name}: {c} record{} ({pct:.1}%)</title>",
            if c == 1 { "" } else { "s" }
        ));
        s.push_str(&format!(
            "<rect class=\"o-{name}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" rx=\"2\"/>",
            cx - bw / 2.0,
            y(c),
            (mt + ph - y(c)).max(0.0)
        ));
        s.push_str(&format!(
            "<text class=\"dl\" x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{c} \u{b7} {pct:.1}%</text>",
            y(c) - 5.0
        ));
        s.push_str(&format!(
            "<text class=\"cat\" x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{name}</text></g>",
            mt + ph + 18.0
        ));
    }
    s.push_str(&format!(
        "<line class=\"axis\" x1=\"{ml}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/></svg>",
        w - mr,
        mt + ph,
        mt + ph
    ));
    s
}

const TOP_ROW_H: f64 = 22.0;
const TOP_MT: f64 = 40.0;
const TOP_MB: f64 = 28.0;

fn top_chart_height(distinct: usize) -> f64 {
    TOP_MT + TOP_ROW_H * distinct.clamp(1, TOP_N) as f64 + TOP_MB
}

/// Horizontal bars for the `TOP_N` busiest values of `keys_of`, each split
/// by outcome so a burst of refusals stands out.
fn top_chart(
    id: &str,
    title: &str,
    what: &str,
    records: &[AuditRecord],
    keys_of: impl Fn(&AuditRecord) -> Vec<String>,
) -> String {
    let mut counts: HashMap<String, Counts> = HashMap::new();
    for r in records {
        for k in keys_of(r) {
            counts.entry(k).or_insert([0; 5])[class_index(r.event.outcome)] += 1;
        }
    }
    let mut rows: Vec<(String, Counts)> = counts.into_iter().collect();
    rows.sort_by(|a, b| total(&b.1).cmp(&total(&a.1)).then_with(|| a.0.cmp(&b.0)));
    let rest: Vec<(String, Counts)> = rows.split_off(rows.len().min(TOP_N));
    let rest_records: u64 = rest.iter().map(|r| total(&r.1)).sum();
    let present: Vec<usize> = (0..5)
        .filter(|i| rows.iter().any(|r| r.1[*i] > 0))
        .collect();

    let (w, ml, mr, mt) = (540.0_f64, 180.0, 48.0, TOP_MT);
    let row_h = TOP_ROW_H;
    let mb = TOP_MB;
    let h = top_chart_height(rows.len());
    let pw = w - ml - mr;
    let max = rows.first().map(|r| total(&r.1)).unwrap_or(0).max(1);
    let heading = format!("{title} (top {})", TOP_N);
    let desc = rows
        .iter()
        .map(|(k, c)| format!("{k}: {}", total(c)))
        .collect::<Vec<_>>()
        .join("; ");
    let mut s = svg_open(id, w as u32, h.ceil() as u32, &heading, &desc);
    s.push_str(&format!(
        "<text class=\"ct\" x=\"10\" y=\"18\">{}</text>",
        esc(&heading)
    ));
    s.push_str(&legend(10.0, 34.0, &present));
    if rows.is_empty() {
        s.push_str(&format!(
            "<text class=\"lbl\" x=\"10\" y=\"{:.1}\">No record names a {}.</text>",
            mt + 15.0,
            esc(what)
        ));
    }
    for (i, (name, c)) in rows.iter().enumerate() {
        let yy = mt + row_h * i as f64;
        let t = total(c);
        s.push_str(&format!(
            "<g><title>{}: {t} record{} ({})</title>",
            esc(name),
            if t == 1 { "" } else { "s" },
            breakdown(c)
        ));
        s.push_str(&format!(
            "<text class=\"lbl\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            ml - 8.0,
            yy + 15.0,
            short_label(name, 26)
        ));
        let mut x = ml;
        for (ci, &v) in c.iter().enumerate() {
            if v == 0 {
                continue;
            }
            let bw = pw * v as f64 / max as f64;
            s.push_str(&format!(
                "<rect class=\"o-{}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"/>",
                CLASSES[ci].1,
                yy + 3.0,
                bw.max(0.5),
                row_h - 6.0
            ));
            x += bw;
        }
        s.push_str(&format!(
            "<text class=\"dl\" x=\"{:.1}\" y=\"{:.1}\">{t}</text></g>",
            x + 5.0,
            yy + 15.0
        ));
    }
    let foot = if rest.is_empty() {
        format!("{} distinct", rows.len())
    } else {
        format!(
            "+ {} more with {} record{}",
            rest.len(),
            rest_records,
            if rest_records == 1 { "" } else { "s" }
        )
    };
    s.push_str(&format!(
        "<line class=\"axis\" x1=\"{ml}\" x2=\"{ml}\" y1=\"{mt}\" y2=\"{:.1}\"/>\
         <text class=\"ax\" x=\"{ml}\" y=\"{:.1}\">{}</text></svg>",
        h - mb,
        h - 8.0,
        esc(&foot)
    ));
    s
}

// ---------------------------------------------------------------------------
// Style and script. Both are pinned by hash in the page's CSP, so edit them
// freely: the hashes follow.

const STYLE: &str = r#"
:root{--ink:#1d2330;--muted:#5d6678;--line:#d9dde5;--bg:#f3f5f8;--card:#fff;--ok:#14663f;--bad:#b3261e;
--success:#2f8f5b;--attempt:#8d9bb0;--refused:#e08a1e;--failure:#c0392b;--none:#c4c9d2}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans","Liberation Sans",Arial,sans-serif}
.wrap{max-width:1240px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:26px;margin:0;line-height:1.2}
h2{font-size:19px;margin:30px 0 10px;padding-bottom:4px;border-bottom:2px solid var(--line)}
code,.id,.num,.t{font-family:ui-monospace,"DejaVu Sans Mono","Liberation Mono",Menlo,Consolas,monospace;font-size:12px}
.titlebar{display:flex;justify-content:space-between;align-items:baseline;flex-wrap:wrap;gap:8px}
.gen{color:var(--muted)}
.status{margin:16px 0 12px;padding:14px 20px;border-radius:8px;color:#fff}
.status.ok{background:var(--ok)}
.status.bad{background:var(--bad)}
.status .big{font-size:40px;font-weight:800;letter-spacing:.06em;line-height:1.1}
.status .sub{font-size:14px;opacity:.95;margin-top:4px}
.status .warn{background:#fff3cd;color:#5c4400;margin-top:10px}
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(120px,1fr));gap:8px;margin:0 0 8px}
.facts div{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:8px 12px}
.facts dt{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.facts dd{margin:2px 0 0;font-weight:600;overflow-wrap:anywhere}
.facts .span2{grid-column:span 2}
.toc{display:flex;flex-wrap:wrap;gap:6px 18px;margin:12px 0 0;padding:10px 14px;background:var(--card);border:1px solid var(--line);border-radius:6px}
.toc a{color:#1f4fa3;text-decoration:none;font-weight:600}
.toc a:hover{text-decoration:underline}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px}
.card.wide{margin-bottom:12px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:12px}
svg.chart{display:block;width:100%;height:auto}
svg .ct{font-size:15px;font-weight:700;fill:var(--ink)}
svg .ax{font-size:11px;fill:var(--muted)}
svg .lbl,svg .cat{font-size:12px;fill:var(--ink)}
svg .lg{font-size:11px;fill:var(--muted)}
svg .dl{font-size:11px;font-weight:700;fill:var(--ink)}
svg .gl{stroke:#e6e9ef;stroke-width:1}
svg .axis{stroke:#8a93a3;stroke-width:1}
svg .tick{stroke:#8a93a3}
svg .hit{fill:transparent}
svg g:hover .hit{fill:rgba(31,79,163,.07)}
.o-success{fill:var(--success);background:var(--success)}
.o-attempt{fill:var(--attempt);background:var(--attempt)}
.o-refused{fill:var(--refused);background:var(--refused)}
.o-failure{fill:var(--failure);background:var(--failure)}
.o-none{fill:var(--none);background:var(--none)}
.badge{display:inline-block;padding:0 7px;border-radius:9px;color:#fff;font-size:11px;font-weight:700;line-height:18px;white-space:nowrap}
.badge.o-none{color:var(--ink)}
table.grid{width:100%;table-layout:fixed;border-collapse:collapse;background:var(--card);border:1px solid var(--line);font-size:13px}
table.grid th{position:sticky;top:0;background:#e9edf3;text-align:left;font-size:12px;padding:6px 8px;border-bottom:1px solid var(--line);z-index:1}
table.grid td{padding:5px 8px;border-top:1px solid #eceff4;vertical-align:top;overflow-wrap:anywhere}
.w5{width:5%}.w7{width:7%}.w8{width:8%}.w10{width:10%}.w11{width:11%}.w12{width:12%}.w14{width:14%}.w16{width:16%}.w35{width:35%}.w9{width:9%}.w15{width:15%}
.w17{width:17%}.w18{width:18%}.w19{width:19%}.w22{width:22%}.w25{width:25%}.w33{width:33%}.w70{width:70%}
table.grid tbody tr:nth-child(even){background:#fafbfc}
td.num{text-align:right;white-space:nowrap}
td.keys{font-size:12px}
td.id{font-size:11px;color:#38445a}
.det{font-size:11px;color:var(--muted)}
tr.dmg{background:#fde8e6!important;box-shadow:inset 4px 0 0 var(--bad)}
.flag{color:var(--bad);font-weight:700}
.muted{color:var(--muted)}
.nw{white-space:nowrap}
.cut{color:var(--muted);font-style:italic}
.warn{background:#fff3cd;border:1px solid #f0d78a;color:#5c4400;border-radius:6px;padding:6px 10px}
.empty{color:var(--muted);font-style:italic}
.lead{color:var(--muted);margin:-4px 0 10px}
ul.steps{margin:0;padding:0;list-style:none;font-size:12px}
ul.steps li{padding:1px 0}
table.damage td{background:#fff}
.filter{margin:0 0 8px}
.filter input{font:inherit;padding:5px 8px;width:320px;max-width:100%;border:1px solid #b8c0cc;border-radius:5px}
footer{margin-top:28px;color:var(--muted);font-size:12px}
a{color:#1f4fa3}
@media (max-width:900px){.grid2{grid-template-columns:1fr}}
@media print{
@page{size:A4 landscape;margin:10mm}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}
body{background:#fff;font-size:9pt}
.wrap{max-width:none;padding:0}
.toc,.filter{display:none}
h2{break-after:avoid}
.card,.status,.facts,tr,svg{break-inside:avoid}
.card{border-color:#bbb}
table.grid{font-size:8pt}
table.grid th{position:static;padding:3px 4px}
table.grid td{padding:2px 4px}
code,.id,.num,.t,td.keys,ul.steps{font-size:7.5pt}
.det{font-size:7pt}
.status .big{font-size:28pt}
.badge{font-size:7pt;line-height:13px;padding:0 5px}
tr[hidden]{display:table-row}
a{color:inherit;text-decoration:none}
.grid2{grid-template-columns:1fr 1fr}
}
"#;

/// Filters timeline rows by text; `#q=word` in the address pre-fills it, so
/// a filtered view can be linked (and tested without a user).
const SCRIPT: &str = r#"
(function(){
var q=document.getElementById('q'),n=document.getElementById('qn');
if(!q||!n){return;}
var rows=document.querySelectorAll('#timeline tbody tr');
function apply(){
var v=q.value.trim().toLowerCase(),c=0;
for(var i=0;i<rows.length;i++){var m=!v||rows[i].textContent.toLowerCase().indexOf(v)>=0;rows[i].hidden=!m;if(m){c++;}}
n.textContent=v?(c+' of '+rows.length+' rows'):'';
}
q.addEventListener('input',apply);
var h=location.hash.slice(1);
if(h.indexOf('q=')===0){try{q.value=decodeURIComponent(h.slice(2));}catch(e){q.value=h.slice(2);}apply();}
})();
"#;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, Damage, GENESIS};

    fn rec(seq: u64, at: &str, actor: &str, action: &str, outcome: Option<Outcome>) -> AuditRecord {
        let event = AuditEvent {
            actor: actor.into(),
            role: "operator".into(),
            tenant: Some("issuer-a".into()),
            action: action.into(),
            outcome,
            ..Default::default()
        };
        AuditRecord {
            seq,
            at: at.into(),
            node: "n1".into(),
            hash: AuditRecord::compute_hash(seq, at, "n1", &event, GENESIS),
            event,
            prev: GENESIS.into(),
            mac: "ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789".into(),
        }
    }

    fn verified(records: &[AuditRecord]) -> VerifyReport {
        VerifyReport {
            records: records.len() as u64,
            first_seq: records.first().map(|r| r.seq),
            last_seq: records.last().map(|r| r.seq),
            ..Default::default()
        }
    }

    fn sample() -> Vec<AuditRecord> {
        let mut v = Vec::new();
        for i in 0..30u64 {
            let o = match i % 5 {
                0 => Outcome::Refused,
                1 => Outcome::Attempt,
                2 => Outcome::Failure,
                _ => Outcome::Success,
            };
            v.push(rec(
                i + 1,
                &format!("2026-03-02T{:02}:{:02}:00Z", 8 + i / 6, (i * 7) % 60),
                ["alice", "bob", "carol"][(i % 3) as usize],
                "key.create",
                Some(o),
            ));
        }
        v
    }

    #[test]
    fn escapes_markup_quotes_and_ampersands() {
        assert_eq!(
            esc("<script>alert(\"x\")</script>"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
        );
        assert_eq!(esc("a & b 'c'"), "a &amp; b &#39;c&#39;");
        assert_eq!(esc("&amp;"), "&amp;amp;");
        assert_eq!(esc("plain café"), "plain café");
    }

    #[test]
    fn shows_invisible_and_bidi_characters() {
        assert_eq!(esc("ad\u{202E}nimi"), "ad\u{2039}U+202E\u{203A}nimi");
        assert_eq!(esc("a\u{200B}b"), "a\u{2039}U+200B\u{203A}b");
        assert_eq!(
            esc("a\nb\0"),
            "a\u{2039}U+000A\u{203A}b\u{2039}U+0000\u{203A}"
        );
    }

    #[test]
    fn long_values_are_cut_on_char_boundaries() {
        let long = "é".repeat(MAX_VALUE_CHARS + 10);
        let c = clip(&long);
        assert!(c.starts_with(&"é".repeat(MAX_VALUE_CHARS)));
        assert!(c.contains("(+10 chars)"));
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn record_values_are_escaped_everywhere() {
        let mut r = rec(
            1,
            "2026-03-02T08:00:00Z",
            "<script>alert(1)</script>",
            "request.create",
            Some(Outcome::Refused),
        );
        r.event.reason = Some("\"><img src=x onerror=alert(2)>".into());
        r.event.request_id = Some("<b>id</b>".into());
        r.event.keys.push(KeyMention {
            tenant: "t&<".into(),
            name: "k\"".into(),
            version: Some(1),
            kcv: Some("<i>".into()),
        });
        r.event.details.insert("op".into(), "<svg onload=x>".into());
        let recs = vec![r];
        let cp = Checkpoint {
            seq: 1,
            hash: "<h>".into(),
            at: "<at>".into(),
            node: "<node>".into(),
            signature: "<sig>".into(),
        };
        let mut v = verified(&recs);
        v.damage.push(Damage {
            kind: DamageKind::Changed,
            seq: 1,
            detail: "<script>bad()</script>".into(),
        });
        let html = render_html("<title>", &recs, &[cp], &v, "<now>");
        for evil in [
            "<script>alert",
            "<img",
            "<b>id",
            "<i>",
            "<svg onload",
            "<h>",
            "<node>",
            "<sig>",
            "<at>",
            "<now>",
            "<title><",
            "<script>bad",
        ] {
            assert!(!html.contains(evil), "unescaped {evil:?}");
        }
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        // Exactly one script element: ours.
        assert_eq!(html.matches("<script").count(), 1);
    }

    #[test]
    fn mac_is_never_shown() {
        let recs = sample();
        let html = render_html("t", &recs, &[], &verified(&recs), "now");
        assert!(!html.contains("ABCDEF0123456789ABCDEF"));
    }

    #[test]
    fn empty_input_renders() {
        let html = render_html(
            "Empty",
            &[],
            &[],
            &VerifyReport::default(),
            "2026-03-02T00:00:00Z",
        );
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.trim_end().ends_with("</html>"));
        assert!(html.contains("VERIFIED"));
        assert!(html.contains("The trail holds no records."));
        assert!(html.contains("No checkpoint was signed."));
        assert!(html.contains("No act was refused or failed."));
    }

    #[test]
    fn damaged_report_shows_damaged_and_each_damage() {
        let recs = sample();
        let mut v = verified(&recs);
        v.damage = vec![
            Damage {
                kind: DamageKind::Changed,
                seq: 4,
                detail: "hash mismatch at four".into(),
            },
            Damage {
                kind: DamageKind::Deleted,
                seq: 9,
                detail: "records 9..11 missing".into(),
            },
            Damage {
                kind: DamageKind::BadSignature,
                seq: 30,
                detail: "checkpoint signature invalid".into(),
            },
        ];
        let html = render_html("t", &recs, &[], &v, "now");
        assert!(html.contains("DAMAGED \u{2014} 3 findings"));
        assert!(!html.contains(">VERIFIED<"));
        for (kind, detail) in [
            ("changed", "hash mismatch at four"),
            ("deleted", "records 9..11 missing"),
            ("bad-signature", "checkpoint signature invalid"),
        ] {
            assert!(html.contains(&format!("<strong>{kind}</strong>")), "{kind}");
            assert!(html.contains(detail), "{detail}");
        }
        assert!(html.contains("<a href=\"#r4\">4</a>"));
        assert!(html.contains("<tr id=\"r4\" class=\"dmg\">"));
    }

    #[test]
    fn verified_report_says_so() {
        let recs = sample();
        let html = render_html("t", &recs, &[], &verified(&recs), "now");
        assert!(html.contains(">VERIFIED<"));
        assert!(!html.contains("DAMAGED"));
        assert!(!html.contains("Caution: the verification covered"));
        // A verification of a different extract is called out.
        let mut v = verified(&recs);
        v.records += 1;
        let html = render_html("t", &recs, &[], &v, "now");
        assert!(html.contains("Caution: the verification covered 31 records"));
    }

    #[test]
    fn charts_are_present() {
        let recs = sample();
        let html = render_html("t", &recs, &[], &verified(&recs), "now");
        assert_eq!(html.matches("<svg").count(), 5);
        for id in [
            "c-activity",
            "c-outcomes",
            "c-actions",
            "c-actors",
            "c-keys",
        ] {
            assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
            assert!(html.contains(&format!("<title id=\"{id}-t\">")), "{id}");
        }
        // Three hours of records: hourly buckets.
        assert!(html.contains("Activity over time (records per hour)"));
        // Data labels on the outcome bars.
        assert!(html.contains(">6 \u{b7} 20.0%</text>"));
    }

    #[test]
    fn bucket_follows_the_span() {
        let t = |s: &str| parse_at(s).unwrap();
        assert_eq!(
            choose_unit(t("2026-03-01T00:00:00Z"), t("2026-03-03T23:00:00Z")),
            Some(Unit::Hour)
        );
        assert_eq!(
            choose_unit(t("2026-03-01T00:00:00Z"), t("2026-05-01T00:00:00Z")),
            Some(Unit::Day)
        );
        assert_eq!(
            choose_unit(t("2025-01-01T00:00:00Z"), t("2026-05-01T00:00:00Z")),
            Some(Unit::Week)
        );
        assert_eq!(
            choose_unit(t("2010-01-01T00:00:00Z"), t("2026-05-01T00:00:00Z")),
            Some(Unit::Month)
        );
        assert_eq!(
            choose_unit(t("0001-01-01T00:00:00Z"), t("9999-01-01T00:00:00Z")),
            None
        );
    }

    #[test]
    fn implausible_times_do_not_explode_the_chart() {
        let mut recs = sample();
        recs.push(rec(
            31,
            "2150-12-31T23:59:59Z",
            "mallory",
            "key.create",
            None,
        ));
        recs.push(rec(32, "not a time", "mallory", "key.create", None));
        let html = render_html("t", &recs, &[], &verified(&recs), "now");
        assert!(html.len() < 200_000);
        assert!(html.contains("Activity over time (records per year)"));
        assert!(html.contains("1 record with an unreadable time not charted"));

        recs.push(rec(
            33,
            "9999-12-31T23:59:59Z",
            "mallory",
            "key.create",
            None,
        ));
        let html = render_html("t", &recs, &[], &verified(&recs), "now");
        assert!(html.len() < 200_000);
        assert!(html.contains("too wide to chart"));
    }

    #[test]
    fn ceremonies_are_grouped_by_request() {
        let mut recs = Vec::new();
        let mut add = |actor: &str, action: &str, id: Option<&str>, o: Outcome| {
            let seq = recs.len() as u64 + 1;
            let mut r = rec(seq, "2026-03-02T08:00:00Z", actor, action, Some(o));
            r.event.request_id = id.map(str::to_string);
            recs.push(r);
        };
        add("alice", "request.create", Some("R1"), Outcome::Success);
        add("bob", "key.create", Some("R1"), Outcome::Success);
        add("bob", "request.approve", Some("R1"), Outcome::Success);
        add("carol", "request.create", Some("R2"), Outcome::Success);
        add("carol", "request.approve", Some("R2"), Outcome::Refused);
        add("dave", "request.approve", Some("R1"), Outcome::Success);
        add("alice", "request.execute", Some("R1"), Outcome::Attempt);
        add("alice", "request.execute", Some("R1"), Outcome::Success);
        add("erin", "ceremony.start", None, Outcome::Success);
        add("erin", "ceremony.component.enter", None, Outcome::Success);

        let groups = ceremony_groups(&recs);
        assert_eq!(groups.len(), 4);
        assert_eq!(groups[0].request_id, Some("R1"));
        // key.create shares the id but is no ceremony record.
        assert_eq!(
            groups[0].records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 3, 6, 7, 8]
        );
        let s = summarize(&groups[0]);
        assert_eq!(s.requested, vec!["alice"]);
        assert_eq!(s.approved, vec!["bob", "dave"]);
        assert_eq!(s.executed, vec!["alice"]);
        assert_eq!(s.outcome, "success");
        assert!(!s.self_approved);

        assert_eq!(groups[1].request_id, Some("R2"));
        let s = summarize(&groups[1]);
        assert_eq!(s.refused_approvals, vec!["carol"]);
        assert!(s.approved.is_empty());
        assert_eq!(s.outcome, "refused");

        // Records without an id stay apart.
        assert_eq!(groups[2].request_id, None);
        assert_eq!(groups[2].records.len(), 1);

        let html = render_html("t", &recs, &[], &verified(&recs), "now");
        assert_eq!(html.matches("<tr><td class=\"id\">").count(), 4);
        assert!(html.contains("bob<br>dave"));
    }

    #[test]
    fn self_approval_is_flagged() {
        let mut a = rec(
            1,
            "2026-03-02T08:00:00Z",
            "alice",
            "request.create",
            Some(Outcome::Success),
        );
        a.event.request_id = Some("R".into());
        let mut b = rec(
            2,
            "2026-03-02T08:01:00Z",
            "alice",
            "request.approve",
            Some(Outcome::Success),
        );
        b.event.request_id = Some("R".into());
        let recs = vec![a, b];
        let html = render_html("t", &recs, &[], &verified(&recs), "now");
        assert!(html.contains("approved by its requester"));
    }

    #[test]
    fn timeline_is_capped_with_a_note() {
        let recs: Vec<AuditRecord> = (1..=(TIMELINE_CAP as u64 + 3))
            .map(|i| {
                rec(
                    i,
                    "2026-03-02T08:00:00Z",
                    "alice",
                    "key.get",
                    Some(Outcome::Success),
                )
            })
            .collect();
        let html = render_html("t", &recs, &[], &verified(&recs), "now");
        assert!(html.contains(&format!(
            "Showing the newest {TIMELINE_CAP} of {} records; the 3 oldest",
            TIMELINE_CAP + 3
        )));
        assert!(!html.contains("<tr id=\"r3\""));
        assert!(html.contains("<tr id=\"r4\""));
    }

    #[test]
    fn csp_pins_the_inline_style_and_script() {
        let html = render_html("t", &[], &[], &VerifyReport::default(), "now");
        assert!(html.contains(&csp_hash(STYLE)));
        assert!(html.contains(&csp_hash(SCRIPT)));
        assert!(html.contains(&format!("<style>{STYLE}</style>")));
        assert!(html.contains(&format!("<script>{SCRIPT}</script>")));
        // Nothing that could be fetched: no URL at all.
        let recs = sample();
        let html = render_html("t", &recs, &[], &verified(&recs), "now");
        assert!(!html.contains("http:") && !html.contains("https:") && !html.contains("//"));
    }

    #[test]
    fn checkpoints_show_prefixes_only() {
        let cp = Checkpoint {
            seq: 100,
            hash: "A".repeat(64),
            at: "2026-03-02T09:00:00Z".into(),
            node: "n1".into(),
            signature: "B".repeat(128),
        };
        let html = render_html("t", &[], &[cp], &VerifyReport::default(), "now");
        assert!(html.contains(&format!("{}\u{2026}", "A".repeat(PREFIX_CHARS))));
        assert!(!html.contains(&"A".repeat(PREFIX_CHARS + 1)));
        assert!(!html.contains(&"B".repeat(PREFIX_CHARS + 1)));
    }
}
