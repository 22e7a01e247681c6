//! GlobalPlatform secure-channel sessions (SCP02, SCP03) for a host that
//! talks to a card: the session keys are derived inside the HSM from the
//! Security Domain's static keys (stored, or diversified from a KMC for this
//! call), the card's cryptogram is verified before anything else, and the
//! keys leave only wrapped under the tenant's transport KEK (KM-2). Nothing
//! derived outlives the call (KM-7); the HSM layer destroys every session
//! object on every path.
//!
//! The audit record holds the key names, the method, the KDD, the sequence
//! counter and the challenges: all public (the card sends them in clear).
//! Neither cryptogram, nor anything wrapped, is recorded.

use super::audited::{no_mentions, Act};
use super::{Actor, KeyService, ServiceError, SessionRefusal, WrappedKey};
use crate::audit::{AuditEvent, Outcome};
use crate::derivation::{
    Handshake, Kdd, KmcDiversification, Scp02Handshake, Scp03Handshake, StaticKeySource, WrappedOut,
};
use crate::hsm::WrapAlg;
use crate::model::{Algorithm, KeyFamily, KeyName, KeyUsage, Tenant};

/// How an SCP02 key set's static keys are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scp02Diversification {
    /// `key_set` is a prefix: the tenant's `<key_set>-enc`, `-mac`, `-dek`.
    None,
    /// `key_set` is an sd-kmc (2-key TDES), diversified by EMV CPS 1.1.
    EmvCps11,
    /// `key_set` is an sd-kmc (2-key TDES), diversified by VISA2.
    Visa2,
}

impl Scp02Diversification {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::EmvCps11 => "emv-cps11",
            Self::Visa2 => "visa2",
        }
    }
}

impl std::str::FromStr for Scp02Diversification {
    type Err = crate::model::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "emv-cps11" => Ok(Self::EmvCps11),
            "visa2" => Ok(Self::Visa2),
            _ => Err(crate::model::ParseError::Unknown {
                what: "SCP02 diversification",
                value: s.chars().take(32).collect(),
                expected: "none, emv-cps11, visa2",
            }),
        }
    }
}

/// How an SCP03 key set's static keys are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scp03Diversification {
    /// `key_set` is a prefix: the tenant's `<key_set>-enc`, `-mac`, `-dek`.
    None,
    /// `key_set` is an sd-kmc (AES), diversified by GlobalPlatform KDF3.
    Kdf3,
}

impl Scp03Diversification {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Kdf3 => "kdf3",
        }
    }
}

impl std::str::FromStr for Scp03Diversification {
    type Err = crate::model::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "kdf3" => Ok(Self::Kdf3),
            _ => Err(crate::model::ParseError::Unknown {
                what: "SCP03 diversification",
                value: s.chars().take(32).collect(),
                expected: "none, kdf3",
            }),
        }
    }
}

/// An SCP02 INITIALIZE UPDATE exchange to open a session for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scp02Request {
    pub tenant: Tenant,
    pub key_set: KeyName,
    pub diversification: Scp02Diversification,
    /// The card's key diversification data; required when diversifying.
    pub kdd: Option<Kdd>,
    pub sequence_counter: [u8; 2],
    pub host_challenge: [u8; 8],
    pub card_challenge: [u8; 6],
    pub card_cryptogram: [u8; 8],
    pub transport_kek: KeyName,
}

/// SCP02 session keys wrapped under the transport KEK, with check values.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scp02Session {
    pub s_enc: WrappedKey,
    pub c_mac: WrappedKey,
    pub r_mac: WrappedKey,
    pub dek: WrappedKey,
    /// Upper-case hex, for EXTERNAL AUTHENTICATE.
    pub host_cryptogram: String,
    /// This card used this card challenge before (flagged in the trail).
    pub card_challenge_reused: bool,
    /// How the keys are wrapped under the transport KEK.
    pub wrap: WrapAlg,
}

/// An SCP03 INITIALIZE UPDATE exchange to open a session for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scp03Request {
    pub tenant: Tenant,
    pub key_set: KeyName,
    pub diversification: Scp03Diversification,
    /// The card's key diversification data; required when diversifying.
    pub kdd: Option<Kdd>,
    pub host_challenge: [u8; 8],
    pub card_challenge: [u8; 8],
    pub card_cryptogram: [u8; 8],
    pub transport_kek: KeyName,
}

/// SCP03 session keys and the static DEK (for PUT KEY), wrapped under the
/// transport KEK, with check values.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scp03Session {
    pub s_enc: WrappedKey,
    pub s_mac: WrappedKey,
    pub s_rmac: WrappedKey,
    pub static_dek: WrappedKey,
    /// Upper-case hex, for EXTERNAL AUTHENTICATE.
    pub host_cryptogram: String,
    /// This card used this card challenge before (flagged in the trail).
    pub card_challenge_reused: bool,
    pub wrap: WrapAlg,
}

/// Which secure channel, for the checks on static keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scp {
    Scp02,
    Scp03,
}

/// The keys a request names: three static keys, or one KMC.
fn key_set_names(
    key_set: &KeyName,
    diversified: bool,
) -> Result<Vec<(KeyName, KeyUsage)>, ServiceError> {
    if diversified {
        return Ok(vec![(key_set.clone(), KeyUsage::SdKmc)]);
    }
    [
        ("enc", KeyUsage::SdStaticEnc),
        ("mac", KeyUsage::SdStaticMac),
        ("dek", KeyUsage::SdStaticDek),
    ]
    .into_iter()
    .map(|(suffix, usage)| {
        KeyName::parse(&format!("{key_set}-{suffix}"))
            .map(|n| (n, usage))
            .map_err(ServiceError::from)
    })
    .collect()
}

fn wrapped(kind: &str, w: WrappedOut) -> WrappedKey {
    WrappedKey {
        kind: kind.to_owned(),
        wrapped: hex::encode_upper(w.wrapped),
        kcv: w.kcv.map(hex::encode_upper),
    }
}

fn card_cryptogram_refused() -> ServiceError {
    ServiceError::Session(SessionRefusal::CardCryptogram)
}

/// The card a session is for, as the replay state knows it: the static
/// keys identify the card, so it is the key set with, when they are
/// diversified, the method and the KDD (undiversified static keys are one
/// card's own).
fn card_id(key_set: &KeyName, method: &str, kdd: Option<&Kdd>) -> String {
    match kdd {
        Some(k) => format!("{key_set}/{method}/{}", k.to_hex()),
        None => key_set.to_string(),
    }
}

/// The audit record of a session request: keys, method, public values.
fn session_act(
    actor: &Actor,
    action: &'static str,
    tenant: &Tenant,
    names: &Result<Vec<(KeyName, KeyUsage)>, ServiceError>,
    kek: &KeyName,
    method: &str,
    kdd: Option<&Kdd>,
) -> Act {
    let mut act = Act::change(actor, action).tenant(tenant);
    if let Ok(names) = names {
        for (n, _) in names {
            act = act.key(tenant, n, None);
        }
    }
    act = act.key(tenant, kek, None).detail("diversification", method);
    if let Some(kdd) = kdd {
        act = act.detail("kdd", kdd.to_hex());
    }
    act
}

impl KeyService {
    /// REPLAY-1: remember this card challenge; a card that repeats one is
    /// either broken or being replayed. The session is still served (the
    /// card cryptogram verified, and a card's challenge may legitimately
    /// repeat after 2^48 sessions), but the trail gets its own record, for
    /// officers to follow up, and the caller is told.
    async fn card_challenge_seen(
        &self,
        tenant: &Tenant,
        card: &str,
        challenge: &[u8],
    ) -> Result<bool, ServiceError> {
        let hex = hex::encode_upper(challenge);
        if self
            .store
            .note_card_challenge(tenant.as_str(), card, &hex)
            .await?
        {
            return Ok(false);
        }
        self.audit
            .record(AuditEvent {
                actor: "kms".into(),
                role: "system".into(),
                tenant: Some(tenant.to_string()),
                action: "session.card-challenge-reused".into(),
                request_id: self.caller.as_ref().map(|c| c.request_id.clone()),
                outcome: Some(Outcome::Success),
                reason: Some("this card used this card challenge before".into()),
                source: Some(self.source.clone()),
                details: [
                    ("card".to_owned(), card.to_owned()),
                    ("card_challenge".to_owned(), hex),
                ]
                .into(),
                ..Default::default()
            })
            .await
            .map_err(ServiceError::Audit)?;
        Ok(true)
    }

    /// Look up the static keys (or KMC) of a request, checking usage,
    /// algorithm and, for SCP03's DEK, that it may leave the token.
    async fn static_key_source(
        &self,
        tenant: &Tenant,
        names: Vec<(KeyName, KeyUsage)>,
        method: Option<(KmcDiversification, Option<Kdd>)>,
        scp: Scp,
    ) -> Result<StaticKeySource, ServiceError> {
        let mut refs = Vec::with_capacity(names.len());
        for (name, usage) in names {
            let (rec, _, r) = self.usable_for_protect(tenant, &name).await?;
            if rec.usage != usage {
                return Err(ServiceError::Invalid(format!(
                    "{tenant}/{name} is a {} key, not an {usage}",
                    rec.usage
                )));
            }
            let fits = match scp {
                // SCP02 is defined for double-length TDES static keys, and
                // EMV CPS 1.1 / VISA2 for double-length KMCs.
                Scp::Scp02 => rec.algorithm == Algorithm::Tdes2,
                Scp::Scp03 => rec.algorithm.family() == KeyFamily::Aes,
            };
            if !fits {
                return Err(ServiceError::Invalid(format!(
                    "{tenant}/{name} is {}; {scp:?} needs {}",
                    rec.algorithm,
                    match scp {
                        Scp::Scp02 => "2-key TDES",
                        Scp::Scp03 => "AES",
                    }
                )));
            }
            // PUT KEY needs the static DEK wrapped; the token would refuse
            // to wrap it anyway, but say why before touching the card's keys.
            if scp == Scp::Scp03 && usage == KeyUsage::SdStaticDek && !rec.exportable {
                return Err(ServiceError::Refused(format!(
                    "{tenant}/{name} was not created exportable; an SCP03 session returns the static DEK wrapped"
                )));
            }
            refs.push(r);
        }
        match (method, refs.as_slice()) {
            (None, [enc, mac, dek]) => Ok(StaticKeySource::Stored {
                enc: *enc,
                mac: *mac,
                dek: *dek,
            }),
            (Some((method, Some(kdd))), [kmc]) => Ok(StaticKeySource::Diversified {
                kmc: *kmc,
                method,
                kdd,
            }),
            (Some((method, None)), _) => Err(ServiceError::Invalid(format!(
                "{method:?} diversification needs the card's KDD"
            ))),
            _ => Err(ServiceError::Internal(
                "static keys do not match the diversification".into(),
            )),
        }
    }

    async fn scp02_session_now(
        &self,
        req: &Scp02Request,
        names: Result<Vec<(KeyName, KeyUsage)>, ServiceError>,
    ) -> Result<Scp02Session, ServiceError> {
        let method = match req.diversification {
            Scp02Diversification::None => None,
            Scp02Diversification::EmvCps11 => Some((KmcDiversification::EmvCps11, req.kdd)),
            Scp02Diversification::Visa2 => Some((KmcDiversification::Visa2, req.kdd)),
        };
        let source = self
            .static_key_source(&req.tenant, names?, method, Scp::Scp02)
            .await?;
        let (kek, alg) = self.transport_kek(&req.tenant, &req.transport_kek).await?;
        // REPLAY-1: a counter at or below the card's last is refused before
        // the token is asked anything; the atomic advance below settles races.
        let card = card_id(&req.key_set, req.diversification.as_str(), req.kdd.as_ref());
        let got = u16::from_be_bytes(req.sequence_counter);
        let tenant = req.tenant.as_str();
        if let Some(last) = self.store.scp02_counter(tenant, &card).await? {
            if got <= last {
                return Err(ServiceError::Session(SessionRefusal::SequenceCounter {
                    got,
                    last,
                }));
            }
        }
        let hs = Scp02Handshake {
            sequence_counter: req.sequence_counter,
            host_challenge: req.host_challenge,
            card_challenge: req.card_challenge,
            card_cryptogram: req.card_cryptogram,
        };
        match self
            .on_hsm(move |h| h.scp02_session(&source, &hs, &kek, alg))
            .await?
        {
            Handshake::CardCryptogramMismatch => Err(card_cryptogram_refused()),
            Handshake::Established(k) => {
                if !self.store.advance_scp02_counter(tenant, &card, got).await? {
                    // Another request for this card, with this or a higher
                    // counter, won the race: this one is a replay.
                    let last = self
                        .store
                        .scp02_counter(tenant, &card)
                        .await?
                        .unwrap_or(got);
                    return Err(ServiceError::Session(SessionRefusal::SequenceCounter {
                        got,
                        last,
                    }));
                }
                let reused = self
                    .card_challenge_seen(&req.tenant, &card, &req.card_challenge)
                    .await?;
                Ok(Scp02Session {
                    s_enc: wrapped("s-enc", k.s_enc),
                    c_mac: wrapped("c-mac", k.c_mac),
                    r_mac: wrapped("r-mac", k.r_mac),
                    dek: wrapped("dek", k.dek),
                    host_cryptogram: hex::encode_upper(k.host_cryptogram),
                    card_challenge_reused: reused,
                    wrap: alg,
                })
            }
        }
    }

    async fn scp03_session_now(
        &self,
        req: &Scp03Request,
        names: Result<Vec<(KeyName, KeyUsage)>, ServiceError>,
    ) -> Result<Scp03Session, ServiceError> {
        let method = match req.diversification {
            Scp03Diversification::None => None,
            Scp03Diversification::Kdf3 => Some((KmcDiversification::Kdf3, req.kdd)),
        };
        let source = self
            .static_key_source(&req.tenant, names?, method, Scp::Scp03)
            .await?;
        let (kek, alg) = self.transport_kek(&req.tenant, &req.transport_kek).await?;
        let hs = Scp03Handshake {
            host_challenge: req.host_challenge,
            card_challenge: req.card_challenge,
            card_cryptogram: req.card_cryptogram,
        };
        match self
            .on_hsm(move |h| h.scp03_session(&source, &hs, &kek, alg))
            .await?
        {
            Handshake::CardCryptogramMismatch => Err(card_cryptogram_refused()),
            Handshake::Established(k) => {
                let card = card_id(&req.key_set, req.diversification.as_str(), req.kdd.as_ref());
                let reused = self
                    .card_challenge_seen(&req.tenant, &card, &req.card_challenge)
                    .await?;
                Ok(Scp03Session {
                    s_enc: wrapped("s-enc", k.s_enc),
                    s_mac: wrapped("s-mac", k.s_mac),
                    s_rmac: wrapped("s-rmac", k.s_rmac),
                    static_dek: wrapped("static-dek", k.static_dek),
                    host_cryptogram: hex::encode_upper(k.host_cryptogram),
                    card_challenge_reused: reused,
                    wrap: alg,
                })
            }
        }
    }

    /// Open an SCP02 session: verify the card cryptogram, then return the
    /// session keys wrapped under the transport KEK and the host cryptogram.
    /// A card cryptogram that does not verify is refused, and nothing is
    /// returned.
    pub async fn scp02_session(
        &self,
        actor: &Actor,
        req: Scp02Request,
    ) -> Result<Scp02Session, ServiceError> {
        let names = key_set_names(
            &req.key_set,
            req.diversification != Scp02Diversification::None,
        );
        let method = req.diversification.as_str();
        let act = session_act(
            actor,
            "session.scp02",
            &req.tenant,
            &names,
            &req.transport_kek,
            method,
            req.kdd.as_ref(),
        )
        .detail("key_set", req.key_set.as_str())
        .detail("sequence_counter", hex::encode_upper(req.sequence_counter))
        .detail("host_challenge", hex::encode_upper(req.host_challenge))
        .detail("card_challenge", hex::encode_upper(req.card_challenge));
        self.audited(act, self.scp02_session_now(&req, names), no_mentions)
            .await
    }

    /// Open an SCP03 session: verify the card cryptogram, then return the
    /// session keys and the static DEK wrapped under the transport KEK, and
    /// the host cryptogram. A card cryptogram that does not verify is
    /// refused, and nothing is returned.
    pub async fn scp03_session(
        &self,
        actor: &Actor,
        req: Scp03Request,
    ) -> Result<Scp03Session, ServiceError> {
        let names = key_set_names(
            &req.key_set,
            req.diversification != Scp03Diversification::None,
        );
        let method = req.diversification.as_str();
        let act = session_act(
            actor,
            "session.scp03",
            &req.tenant,
            &names,
            &req.transport_kek,
            method,
            req.kdd.as_ref(),
        )
        .detail("key_set", req.key_set.as_str())
        .detail("host_challenge", hex::encode_upper(req.host_challenge))
        .detail("card_challenge", hex::encode_upper(req.card_challenge));
        self.audited(act, self.scp03_session_now(&req, names), no_mentions)
            .await
    }
}
