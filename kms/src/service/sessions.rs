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
    emv_cps11_data, kdf3_message, visa2_data, Handshake, Kdd, KmcDiversification, Scp02Handshake,
    Scp03Handshake, SdKeyKind, StaticKeySource, WrappedOut,
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

/// The keys a request names: three static keys, or one KMC. The one place
/// that knows the `<key_set>-enc/-mac/-dek` convention (the API's policy
/// check asks it too).
pub(crate) fn key_set_names(
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

/// The card a session is for, as the replay state knows it. It must be
/// exactly what determines the card's static keys, so that no variation of
/// the request gives the same keys a fresh counter or challenge history:
/// undiversified static keys are one card's own, whatever KDD is sent;
/// diversified ones are determined by the KMC, the method and the bytes of
/// the KDD that the method uses (EMV CPS 1.1 ignores KDD[0..4], VISA2
/// KDD[2..4] and KDD[8..10]), i.e. by the ENC key's derivation data.
fn card_id(key_set: &KeyName, method: KmcMethod, kdd: Option<&Kdd>) -> String {
    let data = match (method, kdd) {
        (KmcMethod::None, _) | (_, None) => return key_set.to_string(),
        (KmcMethod::EmvCps11, Some(k)) => emv_cps11_data(k, SdKeyKind::Enc),
        (KmcMethod::Visa2, Some(k)) => visa2_data(k, SdKeyKind::Enc),
        (KmcMethod::Kdf3, Some(k)) => kdf3_message(k, SdKeyKind::Enc),
    };
    format!("{key_set}/{}/{}", method.as_str(), hex::encode_upper(data))
}

/// The diversification of a request, for [`card_id`].
#[derive(Debug, Clone, Copy)]
enum KmcMethod {
    None,
    EmvCps11,
    Visa2,
    Kdf3,
}

impl KmcMethod {
    fn as_str(self) -> &'static str {
        match self {
            KmcMethod::None => "none",
            KmcMethod::EmvCps11 => "emv-cps11",
            KmcMethod::Visa2 => "visa2",
            KmcMethod::Kdf3 => "kdf3",
        }
    }
}

impl From<Scp02Diversification> for KmcMethod {
    fn from(d: Scp02Diversification) -> Self {
        match d {
            Scp02Diversification::None => KmcMethod::None,
            Scp02Diversification::EmvCps11 => KmcMethod::EmvCps11,
            Scp02Diversification::Visa2 => KmcMethod::Visa2,
        }
    }
}

impl From<Scp03Diversification> for KmcMethod {
    fn from(d: Scp03Diversification) -> Self {
        match d {
            Scp03Diversification::None => KmcMethod::None,
            Scp03Diversification::Kdf3 => KmcMethod::Kdf3,
        }
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
        let card = card_id(&req.key_set, req.diversification.into(), req.kdd.as_ref());
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
                let card = card_id(&req.key_set, req.diversification.into(), req.kdd.as_ref());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kdd(hex: &str) -> Kdd {
        Kdd::parse_hex(hex).unwrap()
    }

    /// REPLAY-1: the replay state's card is what determines the card's
    /// keys, so bytes a method ignores cannot buy a fresh counter.
    #[test]
    fn replay_1_the_card_id_ignores_exactly_what_the_keys_ignore() {
        let ks = KeyName::parse("ks").unwrap();
        let a = kdd("00010203040506070809");
        // Undiversified: the KDD plays no part.
        assert_eq!(
            card_id(&ks, KmcMethod::None, Some(&a)),
            card_id(&ks, KmcMethod::None, None)
        );
        // EMV CPS 1.1 ignores KDD[0..4].
        let cps = |k: &Kdd| card_id(&ks, KmcMethod::EmvCps11, Some(k));
        assert_eq!(cps(&a), cps(&kdd("FFFFFFFF040506070809")));
        assert_ne!(cps(&a), cps(&kdd("00010203FF0506070809")));
        // VISA2 ignores KDD[2..4] and KDD[8..10].
        let v2 = |k: &Kdd| card_id(&ks, KmcMethod::Visa2, Some(k));
        assert_eq!(v2(&a), v2(&kdd("0001FFFF04050607FFFF")));
        assert_ne!(v2(&a), v2(&kdd("FF010203040506070809")));
        assert_ne!(v2(&a), v2(&kdd("00010203040506FF0809")));
        // KDF3 uses all of it.
        let k3 = |k: &Kdd| card_id(&ks, KmcMethod::Kdf3, Some(k));
        assert_ne!(k3(&a), k3(&kdd("FF010203040506070809")));
        assert_ne!(k3(&a), k3(&kdd("000102030405060708FF")));
        // The method and the key set are part of it.
        assert_ne!(cps(&a), v2(&a));
        let other = KeyName::parse("ks2").unwrap();
        assert_ne!(cps(&a), card_id(&other, KmcMethod::EmvCps11, Some(&a)));
    }
}
