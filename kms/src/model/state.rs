//! Key states and their legal transitions, after NIST SP 800-57 Part 1 §7.

use super::ParseError;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    PreActivation,
    Active,
    Suspended,
    Deactivated,
    Compromised,
    Destroyed,
    DestroyedCompromised,
}

/// A state change a person asks for. Destruction is not here: it is its own
/// operation because it removes the token object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Activate,
    Suspend,
    Reactivate,
    Deactivate,
    Compromise,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a key in state {from} cannot go to {to}")]
pub struct StateError {
    pub from: KeyState,
    pub to: KeyState,
}

impl KeyState {
    pub const ALL: [KeyState; 7] = [
        KeyState::PreActivation,
        KeyState::Active,
        KeyState::Suspended,
        KeyState::Deactivated,
        KeyState::Compromised,
        KeyState::Destroyed,
        KeyState::DestroyedCompromised,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::PreActivation => "pre-activation",
            KeyState::Active => "active",
            KeyState::Suspended => "suspended",
            KeyState::Deactivated => "deactivated",
            KeyState::Compromised => "compromised",
            KeyState::Destroyed => "destroyed",
            KeyState::DestroyedCompromised => "destroyed-compromised",
        }
    }

    /// SP 800-57 figure 3, and nothing else.
    pub fn can_go_to(self, to: KeyState) -> bool {
        use KeyState::*;
        matches!(
            (self, to),
            (PreActivation, Active)
                | (PreActivation, Compromised)
                | (PreActivation, Destroyed)
                | (Active, Suspended)
                | (Active, Deactivated)
                | (Active, Compromised)
                | (Suspended, Active)
                | (Suspended, Deactivated)
                | (Suspended, Compromised)
                | (Deactivated, Destroyed)
                | (Deactivated, Compromised)
                | (Compromised, DestroyedCompromised)
                | (Destroyed, DestroyedCompromised)
        )
    }

    pub fn apply(self, t: Transition) -> Result<KeyState, StateError> {
        let to = match (self, t) {
            (KeyState::Suspended, Transition::Reactivate) => KeyState::Active,
            (_, Transition::Reactivate) => KeyState::Active,
            (_, Transition::Activate) => KeyState::Active,
            (_, Transition::Suspend) => KeyState::Suspended,
            (_, Transition::Deactivate) => KeyState::Deactivated,
            (KeyState::Destroyed, Transition::Compromise) => KeyState::DestroyedCompromised,
            (_, Transition::Compromise) => KeyState::Compromised,
        };
        // Reactivate is only legal out of Suspended; Activate only out of PreActivation.
        let legal = self.can_go_to(to)
            && match t {
                Transition::Activate => self == KeyState::PreActivation,
                Transition::Reactivate => self == KeyState::Suspended,
                _ => true,
            };
        if legal {
            Ok(to)
        } else {
            Err(StateError { from: self, to })
        }
    }

    /// The destroyed state a key in this state ends in.
    pub fn destroyed(self) -> Result<KeyState, StateError> {
        let to = if self == KeyState::Compromised {
            KeyState::DestroyedCompromised
        } else {
            KeyState::Destroyed
        };
        if self.can_go_to(to) {
            Ok(to)
        } else {
            Err(StateError { from: self, to })
        }
    }

    pub fn is_destroyed(self) -> bool {
        matches!(self, KeyState::Destroyed | KeyState::DestroyedCompromised)
    }

    /// May this key protect new data (wrap, encrypt, sign, derive)?
    pub fn may_protect(self) -> bool {
        self == KeyState::Active
    }

    /// May this key process already protected data (unwrap, decrypt, verify)?
    /// A deactivated (rotated-out) version still may, per SP 800-57 §5.3.
    pub fn may_process(self) -> bool {
        matches!(self, KeyState::Active | KeyState::Deactivated)
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyState {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        KeyState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ParseError::Unknown {
                what: "key state",
                value: s.chars().take(64).collect(),
                expected: "pre-activation, active, suspended, deactivated, compromised, destroyed, destroyed-compromised",
            })
    }
}

impl serde::Serialize for KeyState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl FromStr for Transition {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Ok(match s {
            "activate" => Transition::Activate,
            "suspend" => Transition::Suspend,
            "reactivate" => Transition::Reactivate,
            "deactivate" => Transition::Deactivate,
            "compromise" => Transition::Compromise,
            _ => {
                return Err(ParseError::Unknown {
                    what: "state change",
                    value: s.chars().take(64).collect(),
                    expected: "activate, suspend, reactivate, deactivate, compromise",
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeyState::*;

    #[test]
    fn legal_transitions() {
        assert_eq!(PreActivation.apply(Transition::Activate), Ok(Active));
        assert_eq!(Active.apply(Transition::Suspend), Ok(Suspended));
        assert_eq!(Suspended.apply(Transition::Reactivate), Ok(Active));
        assert_eq!(Active.apply(Transition::Deactivate), Ok(Deactivated));
        assert_eq!(Deactivated.apply(Transition::Compromise), Ok(Compromised));
        assert_eq!(
            Destroyed.apply(Transition::Compromise),
            Ok(DestroyedCompromised)
        );
        assert_eq!(Deactivated.destroyed(), Ok(Destroyed));
        assert_eq!(Compromised.destroyed(), Ok(DestroyedCompromised));
    }

    #[test]
    fn illegal_transitions_are_refused() {
        assert!(Deactivated.apply(Transition::Activate).is_err());
        assert!(Active.apply(Transition::Activate).is_err());
        assert!(Active.apply(Transition::Reactivate).is_err());
        assert!(Compromised.apply(Transition::Reactivate).is_err());
        assert!(Destroyed.apply(Transition::Activate).is_err());
        assert!(
            Active.destroyed().is_err(),
            "an active key must be deactivated first"
        );
        assert!(DestroyedCompromised.apply(Transition::Compromise).is_err());
    }

    #[test]
    fn only_active_keys_protect() {
        for s in KeyState::ALL {
            assert_eq!(s.may_protect(), s == Active);
        }
        assert!(Deactivated.may_process());
        assert!(!Suspended.may_process());
        assert!(!Compromised.may_process());
    }
}
