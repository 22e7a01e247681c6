//! The people of key ceremonies: custodians, security officers and operators
//! (issue 5), their names, roles, certificates and login windows (TSM-AC-5).

use super::ParseError;
use std::fmt;
use std::str::FromStr;
use time::{OffsetDateTime, UtcOffset, Weekday};

/// What an enrolled person may do in ceremonies. The same spellings as the
/// API principals' roles (`policies/principals.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CustodianRole {
    /// Holds a component or a share; approves.
    Custodian,
    /// Re-enables locked people (AUTH-PIN-LOCK), marks KEKs trusted.
    SecurityOfficer,
    /// Runs the service.
    Operator,
}

impl CustodianRole {
    pub const ALL: [CustodianRole; 3] = [
        CustodianRole::Custodian,
        CustodianRole::SecurityOfficer,
        CustodianRole::Operator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CustodianRole::Custodian => "custodian",
            CustodianRole::SecurityOfficer => "security-officer",
            CustodianRole::Operator => "operator",
        }
    }
}

impl fmt::Display for CustodianRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CustodianRole {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        CustodianRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ParseError::Unknown {
                what: "role",
                value: s.chars().take(64).collect(),
                expected: "custodian, security-officer, operator",
            })
    }
}

/// A person's name: their actor in the audit trail, never reused (a removed
/// person's row stays). Lower-case so that `Alice` and `alice` cannot be two
/// people: 1 to 64 of `a-z`, `0-9`, `.`, `-`, `_`, starting with a letter
/// (so that a numeric PIN typed into the name field is never taken for a
/// name, and never recorded as one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct CustodianName(String);

impl CustodianName {
    pub fn parse(s: &str) -> Result<CustodianName, ParseError> {
        let bad = |why| {
            Err(ParseError::Invalid {
                what: "custodian name",
                value: s.chars().take(64).collect(),
                why,
            })
        };
        if s.is_empty() || s.len() > 64 {
            return bad("must be 1 to 64 characters");
        }
        if !s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        }) {
            return bad("only lower-case letters, digits, '-', '_' and '.' are allowed");
        }
        if !s.as_bytes()[0].is_ascii_lowercase() {
            return bad("must start with a letter");
        }
        Ok(CustodianName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CustodianName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client certificate's SHA-256 fingerprint as stored: 64 upper-case hex
/// digits. Accepts the colon- or space-separated form `openssl x509
/// -fingerprint -sha256` prints.
pub fn parse_cert_sha256(s: &str) -> Result<String, ParseError> {
    let hex: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .collect::<String>()
        .to_ascii_uppercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(ParseError::Invalid {
            what: "certificate SHA-256 fingerprint",
            value: s.chars().take(100).collect(),
            why: "expected 64 hex digits, colons allowed",
        })
    }
}

/// When a person may log in (TSM-AC-5): one or more clauses separated by
/// `;`, each `DAYS HH:MM-HH:MM [OFFSET]`.
///
/// - `DAYS`: `Mon`..`Sun`, ranges (`Mon-Fri`, `Fri-Mon` wraps), lists
///   (`Mon,Wed,Fri`), or `daily`.
/// - Times are local to the clause's offset; the start is included, the end
///   is not; `24:00` may end a day. An end before the start crosses
///   midnight, the days naming the day the window opens (`Fri 22:00-06:00`
///   is Friday night to Saturday 06:00).
/// - `OFFSET` is a fixed UTC offset, `+08:00` for Taipei, or `UTC` (the
///   default). Time-zone names are not accepted: the KMS carries no time
///   zone database, Taiwan keeps no daylight saving time, and elsewhere the
///   window is re-set when the clocks change.
///
/// Example: `Mon-Fri 08:00-18:00 +08:00; Sat 09:00-12:00 +08:00`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginWindow {
    clauses: Vec<Clause>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Clause {
    /// Monday first.
    days: [bool; 7],
    /// Minutes after local midnight; `end` may be 1440.
    start: u16,
    end: u16,
    offset: UtcOffset,
}

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

fn window_error(s: &str, why: &'static str) -> ParseError {
    ParseError::Invalid {
        what: "login window",
        value: s.chars().take(200).collect(),
        why,
    }
}

fn day_index(s: &str) -> Option<usize> {
    DAY_NAMES.iter().position(|d| d.eq_ignore_ascii_case(s))
}

fn parse_days(s: &str) -> Option<[bool; 7]> {
    let mut days = [false; 7];
    if s.eq_ignore_ascii_case("daily") {
        return Some([true; 7]);
    }
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day_index(a)?, day_index(b)?);
                let mut d = a;
                loop {
                    days[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day_index(part)?] = true,
        }
    }
    Some(days)
}

fn parse_hm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

fn parse_offset(s: &str) -> Option<UtcOffset> {
    if s.eq_ignore_ascii_case("utc") || s == "Z" {
        return Some(UtcOffset::UTC);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1i8, &s[1..]),
        b'-' => (-1i8, &s[1..]),
        _ => return None,
    };
    let minutes = parse_hm(rest)?;
    if minutes > 14 * 60 {
        return None;
    }
    let (h, m) = ((minutes / 60) as i8, (minutes % 60) as i8);
    UtcOffset::from_hms(sign * h, sign * m, 0).ok()
}

impl LoginWindow {
    pub fn parse(s: &str) -> Result<LoginWindow, ParseError> {
        if s.len() > 500 {
            return Err(window_error(s, "too long"));
        }
        let mut clauses = Vec::new();
        for text in s.split(';').map(str::trim) {
            let words: Vec<&str> = text.split_whitespace().collect();
            let (days, span, offset) = match words.as_slice() {
                [d, t] => (*d, *t, UtcOffset::UTC),
                [d, t, o] => (
                    *d,
                    *t,
                    parse_offset(o).ok_or_else(|| {
                        window_error(s, "the offset is UTC or +HH:MM / -HH:MM (at most 14:00)")
                    })?,
                ),
                _ => {
                    return Err(window_error(
                        s,
                        "each clause is DAYS HH:MM-HH:MM [OFFSET], clauses separated by ';'",
                    ))
                }
            };
            let days = parse_days(days).ok_or_else(|| {
                window_error(
                    s,
                    "days are Mon..Sun, ranges (Mon-Fri), lists (Mon,Wed) or daily",
                )
            })?;
            let (start, end) = span
                .split_once('-')
                .and_then(|(a, b)| Some((parse_hm(a)?, parse_hm(b)?)))
                .ok_or_else(|| window_error(s, "times are HH:MM-HH:MM, 00:00 to 24:00"))?;
            if start == end || start == 1440 {
                return Err(window_error(s, "a window must not be empty"));
            }
            clauses.push(Clause {
                days,
                start,
                end,
                offset,
            });
        }
        Ok(LoginWindow { clauses })
    }

    /// Whether `at` falls inside the window.
    pub fn contains(&self, at: OffsetDateTime) -> bool {
        self.clauses.iter().any(|c| c.contains(at))
    }
}

impl serde::Serialize for LoginWindow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn weekday_index(w: Weekday) -> usize {
    usize::from(w.number_days_from_monday())
}

impl Clause {
    fn contains(&self, at: OffsetDateTime) -> bool {
        let local = at.to_offset(self.offset);
        let today = weekday_index(local.weekday());
        let yesterday = (today + 6) % 7;
        let now = u16::from(local.hour()) * 60 + u16::from(local.minute());
        if self.start < self.end {
            self.days[today] && self.start <= now && now < self.end
        } else {
            (self.days[today] && now >= self.start) || (self.days[yesterday] && now < self.end)
        }
    }
}

fn fmt_hm(f: &mut fmt::Formatter<'_>, minutes: u16) -> fmt::Result {
    write!(f, "{:02}:{:02}", minutes / 60, minutes % 60)
}

/// The canonical form, as stored: days as Monday-first ranges, times, and
/// the offset (`UTC` or `+HH:MM`).
impl fmt::Display for LoginWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.clauses.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if c.days == [true; 7] {
                f.write_str("daily")?;
            } else {
                let mut first = true;
                let mut d = 0;
                while d < 7 {
                    if !c.days[d] {
                        d += 1;
                        continue;
                    }
                    let mut e = d;
                    while e + 1 < 7 && c.days[e + 1] {
                        e += 1;
                    }
                    if !first {
                        f.write_str(",")?;
                    }
                    first = false;
                    if e == d {
                        f.write_str(DAY_NAMES[d])?;
                    } else {
                        write!(f, "{}-{}", DAY_NAMES[d], DAY_NAMES[e])?;
                    }
                    d = e + 1;
                }
            }
            f.write_str(" ")?;
            fmt_hm(f, c.start)?;
            f.write_str("-")?;
            fmt_hm(f, c.end)?;
            if c.offset == UtcOffset::UTC {
                f.write_str(" UTC")?;
            } else {
                let (h, m, _) = c.offset.as_hms();
                let sign = if c.offset.is_negative() { '-' } else { '+' };
                write!(f, " {sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn roles_round_trip() {
        for r in CustodianRole::ALL {
            assert_eq!(r.as_str().parse::<CustodianRole>().unwrap(), r);
        }
        assert!("provisioner".parse::<CustodianRole>().is_err());
    }

    #[test]
    fn names_are_lower_case_identifiers() {
        assert!(CustodianName::parse("alice").is_ok());
        assert!(CustodianName::parse("so.chen-2").is_ok());
        for bad in [
            "",
            "Alice",
            "-x",
            "1x",
            "583140",
            "a b",
            "a/b",
            &"a".repeat(65),
        ] {
            assert!(CustodianName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_are_normalized() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_cert_sha256(&hex).unwrap(), "AB".repeat(32));
        assert_eq!(parse_cert_sha256(&colons).unwrap(), "AB".repeat(32));
        assert!(parse_cert_sha256("abcd").is_err());
        assert!(parse_cert_sha256(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn tsm_ac_5_weekday_office_hours_in_taipei() {
        let w = LoginWindow::parse("Mon-Fri 08:00-18:00 +08:00").unwrap();
        assert_eq!(w.to_string(), "Mon-Fri 08:00-18:00 +08:00");
        // 2026-03-02 is a Monday; 08:00 in Taipei is 00:00 UTC.
        assert!(w.contains(datetime!(2026-03-02 00:00 UTC)));
        assert!(w.contains(datetime!(2026-03-02 09:59:59 UTC)));
        assert!(
            !w.contains(datetime!(2026-03-02 10:00 UTC)),
            "the end is excluded"
        );
        assert!(
            !w.contains(datetime!(2026-03-01 23:59 UTC)),
            "07:59 Monday local"
        );
        // Friday 17:00 local in, Saturday 10:00 local out.
        assert!(w.contains(datetime!(2026-03-06 09:00 UTC)));
        assert!(!w.contains(datetime!(2026-03-07 02:00 UTC)));
    }

    #[test]
    fn tsm_ac_5_overnight_lists_and_several_clauses() {
        let w = LoginWindow::parse("fri 22:00-06:00 UTC").unwrap();
        assert_eq!(w.to_string(), "Fri 22:00-06:00 UTC");
        assert!(w.contains(datetime!(2026-03-06 23:00 UTC)), "Friday night");
        assert!(
            w.contains(datetime!(2026-03-07 05:59 UTC)),
            "Saturday early"
        );
        assert!(!w.contains(datetime!(2026-03-07 06:00 UTC)));
        assert!(!w.contains(datetime!(2026-03-06 05:00 UTC)), "Friday early");

        let w = LoginWindow::parse("Mon,Wed,Fri 09:00-12:00; Sat-Sun 10:00-24:00 -05:30").unwrap();
        assert_eq!(
            w.to_string(),
            "Mon,Wed,Fri 09:00-12:00 UTC; Sat-Sun 10:00-24:00 -05:30"
        );
        assert!(w.contains(datetime!(2026-03-04 11:00 UTC)), "Wednesday");
        assert!(!w.contains(datetime!(2026-03-03 11:00 UTC)), "Tuesday");
        // Sunday 23:30 at -05:30 is Monday 05:00 UTC.
        assert!(w.contains(datetime!(2026-03-09 05:00 UTC)));
        let daily = LoginWindow::parse("daily 00:00-24:00").unwrap();
        assert_eq!(daily.to_string(), "daily 00:00-24:00 UTC");
        assert!(daily.contains(datetime!(2026-03-04 23:59:59 UTC)));
        let wrap = LoginWindow::parse("Sat-Mon 08:00-09:00").unwrap();
        assert_eq!(wrap.to_string(), "Mon,Sat-Sun 08:00-09:00 UTC");
        // Canonical text parses back to the same window.
        for w in [w, daily, wrap] {
            assert_eq!(LoginWindow::parse(&w.to_string()).unwrap(), w);
        }
    }

    #[test]
    fn tsm_ac_5_bad_windows_are_refused() {
        for bad in [
            "",
            "Mon-Fri",
            "Mon-Fri 08:00",
            "Mon-Fri 8:00-18:00",
            "Mon-Fri 08:00-08:00",
            "Mon-Fri 08:00-25:00",
            "Mon-Fri 08:60-09:00",
            "Funday 08:00-18:00",
            "Mon-Fri 08:00-18:00 Asia/Taipei",
            "Mon-Fri 08:00-18:00 +15:00",
            "Mon-Fri 08:00-18:00 +08:00 extra",
            "Mon-Fri 08:00-18:00;",
        ] {
            assert!(LoginWindow::parse(bad).is_err(), "{bad:?}");
        }
    }
}
