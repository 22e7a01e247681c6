//! Validated identifiers.

use super::ParseError;
use std::fmt;

fn check_ident(what: &'static str, s: &str, max: usize) -> Result<(), ParseError> {
    let bad = |why| {
        Err(ParseError::Invalid {
            what,
            value: s.chars().take(64).collect(),
            why,
        })
    };
    if s.is_empty() {
        return bad("must not be empty");
    }
    if s.len() > max {
        return bad("too long");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    Ok(())
}

/// A key's name, unique within its tenant (e.g. `kmc-2026`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct KeyName(String);

impl KeyName {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        check_ident("key name", s, 64)?;
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The owner of a Security Domain's keys (an issuer or an MNO).
/// KM-4: keys are always looked up by (tenant, name), never by name alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Tenant(String);

impl Tenant {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        check_ident("tenant", s, 32)?;
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The CKA_ID that binds a key version's database row to its token object:
/// 16 random bytes, shown as upper-case hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 16]);

impl ObjectId {
    pub fn random() -> Self {
        Self(rand::random())
    }
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(Self)
    }
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
    pub fn parse_hex(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::Invalid {
            what: "object id",
            value: s.chars().take(64).collect(),
            why: "expected 32 hex digits",
        };
        let v = hex::decode(s).map_err(|_| bad())?;
        Self::from_bytes(&v).ok_or_else(bad)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode_upper(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(KeyName::parse("kmc-2026.v1").is_ok());
        assert!(KeyName::parse("").is_err());
        assert!(KeyName::parse("-x").is_err());
        assert!(KeyName::parse("a b").is_err());
        assert!(KeyName::parse("a'; drop table keys").is_err());
        assert!(KeyName::parse(&"a".repeat(65)).is_err());
        assert!(Tenant::parse("issuer-a").is_ok());
        assert!(Tenant::parse("issuer/a").is_err());
    }

    #[test]
    fn object_id_round_trips() {
        let id = ObjectId::random();
        assert_eq!(ObjectId::parse_hex(&id.to_string()), Ok(id));
        assert!(ObjectId::parse_hex("zz").is_err());
    }
}
