//! Initializing, rotating and re-keying the seal (issue 5, KM-2; the
//! domain is in `crate::seal`). Each is one audited act: the attempt is
//! recorded before anything changes, with M, N, the new split id and the
//! check values (public fingerprints; never a share or the secret).
//!
//! Order of changes: the token PIN first, then the database row. If the
//! row cannot be written the PIN is changed back. A crash between the two
//! leaves a token whose user PIN nobody knows and no seal in the database:
//! the security officer resets the user PIN (C_InitPIN, softhsm2-util or
//! the vendor tool) and the ceremony is run again; no key is lost.

use super::audited::{no_mentions, Act};
use super::{Actor, KeyService, ServiceError};
use crate::crypto::{shares, Share, UnsealSecret};
use crate::hsm::Role;
use crate::seal::{rebuild, token_pin, UnsealError};
use crate::store::{SealKind, SealRecord};
use zeroize::Zeroizing;

/// A new split, made before the act is recorded so the record names it.
struct Prepared {
    record: SealRecord,
    shares: Vec<Share>,
    /// The PIN to set, for an initialization or a re-key.
    new_pin: Option<Zeroizing<String>>,
}

fn refused(e: UnsealError) -> ServiceError {
    match e {
        UnsealError::Store(s) => ServiceError::Store(s),
        UnsealError::Service(s) => s,
        other => ServiceError::Refused(other.to_string()),
    }
}

impl KeyService {
    /// Seal the deployment: a new unseal secret from the token, split into
    /// `n` shares needing `m`, and the token's user PIN changed to the PIN
    /// derived from it. Returns the shares, to be handed to the custodians
    /// one each; nothing else ever holds them. Refused when a seal exists
    /// or under the security officer's login.
    pub async fn initialize_seal(
        &self,
        actor: &Actor,
        m: u8,
        n: u8,
    ) -> Result<Vec<Share>, ServiceError> {
        let prepared = self.fresh_split(actor, 1, SealKind::Initialize, m, n).await;
        let act = Self::act(actor, "seal.initialize", m, n, None, &prepared);
        self.audited(
            act,
            async {
                let p = prepared?;
                self.require_user_login()?;
                if let Some(cur) = self.store().seal_current().await? {
                    return Err(ServiceError::Refused(format!(
                        "the KMS is sealed already (generation {}, {} of {}); rotate or re-key instead",
                        cur.generation, cur.threshold, cur.shares
                    )));
                }
                self.commit(p).await
            },
            no_mentions,
        )
        .await
    }

    /// New shares of the same secret (issue 5, rotation of the unseal
    /// shares): needs M current shares, makes a new split (new split id,
    /// next generation), so every old share is refused from now on. The
    /// token PIN does not change.
    pub async fn rotate_shares(
        &self,
        actor: &Actor,
        current: &[Share],
        m: u8,
        n: u8,
    ) -> Result<Vec<Share>, ServiceError> {
        let prepared = self.resplit(actor, current, m, n).await;
        let act = Self::act(actor, "seal.rotate", m, n, Some(current), &prepared);
        self.audited(
            act,
            async {
                let p = prepared?;
                self.commit(p).await
            },
            no_mentions,
        )
        .await
    }

    /// A new secret and a new token PIN: needs M current shares, draws a
    /// new secret, changes the PIN from the old secret's to the new one's
    /// and hands out new shares; the old ones open nothing any more.
    pub async fn rekey_seal(
        &self,
        actor: &Actor,
        current: &[Share],
        m: u8,
        n: u8,
    ) -> Result<Vec<Share>, ServiceError> {
        let prepared = match self.current_secret(current).await {
            Ok((rec, _old)) => {
                self.fresh_split(actor, rec.generation + 1, SealKind::Rekey, m, n)
                    .await
            }
            Err(e) => Err(e),
        };
        let act = Self::act(actor, "seal.rekey", m, n, Some(current), &prepared);
        self.audited(
            act,
            async {
                let p = prepared?;
                self.commit(p).await
            },
            no_mentions,
        )
        .await
    }

    /// The seal in force, if any.
    pub async fn seal_record(&self) -> Result<Option<SealRecord>, ServiceError> {
        Ok(self.store().seal_current().await?)
    }

    fn act(
        actor: &Actor,
        action: &'static str,
        m: u8,
        n: u8,
        presented: Option<&[Share]>,
        prepared: &Result<Prepared, ServiceError>,
    ) -> Act {
        let mut act = Act::change(actor, action)
            .detail("threshold", m.to_string())
            .detail("shares", n.to_string());
        if let Some(p) = presented {
            let idx: Vec<String> = p.iter().map(|s| s.index().to_string()).collect();
            act = act.detail("presented_indexes", idx.join(","));
        }
        if let Ok(p) = prepared {
            let checks: Vec<String> = p
                .record
                .share_checks
                .iter()
                .map(|(i, c)| format!("{i}:{c}"))
                .collect();
            act = act
                .detail("generation", p.record.generation.to_string())
                .detail("split_id", p.record.split_id.clone())
                .detail("secret_check", p.record.secret_check.to_string())
                .detail("share_checks", checks.join(","));
        }
        act
    }

    fn require_user_login(&self) -> Result<(), ServiceError> {
        if self.hsm().role() != Role::User {
            return Err(ServiceError::Refused(
                "the seal protects the user PIN: run this under the user's login".into(),
            ));
        }
        Ok(())
    }

    /// The seal in force and its secret, rebuilt from `current` and
    /// confirmed to be the one this process is logged in with.
    async fn current_secret(
        &self,
        current: &[Share],
    ) -> Result<(SealRecord, UnsealSecret), ServiceError> {
        self.require_user_login()?;
        let rec = self
            .store()
            .seal_current()
            .await?
            .ok_or_else(|| refused(UnsealError::NotSealed))?;
        let secret = rebuild(&rec, current).map_err(refused)?;
        let pin = token_pin(&secret);
        if !self.hsm().is_login_pin(&pin) {
            return Err(ServiceError::Inconsistent(
                "the shares rebuild the recorded secret, but its PIN is not the one this process logged in with"
                    .into(),
            ));
        }
        Ok((rec, secret))
    }

    async fn resplit(
        &self,
        actor: &Actor,
        current: &[Share],
        m: u8,
        n: u8,
    ) -> Result<Prepared, ServiceError> {
        let (rec, secret) = self.current_secret(current).await?;
        let mut shares =
            shares::split(&secret, m, n).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        // A 40-bit split id could repeat; the old split's must not.
        for _ in 0..4 {
            if shares.first().map(|s| s.split_id().to_string()) != Some(rec.split_id.clone()) {
                break;
            }
            shares =
                shares::split(&secret, m, n).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        }
        Ok(Prepared {
            record: Self::record_of(
                actor,
                rec.generation + 1,
                SealKind::Rotate,
                &secret,
                &shares,
                m,
                n,
            )?,
            shares,
            new_pin: None,
        })
    }

    async fn fresh_split(
        &self,
        actor: &Actor,
        generation: u32,
        kind: SealKind,
        m: u8,
        n: u8,
    ) -> Result<Prepared, ServiceError> {
        if m < 2 || m > n {
            return Err(ServiceError::Invalid(format!(
                "a seal needs 2 <= M <= N <= 255 shares, not {m} of {n}"
            )));
        }
        let random = Zeroizing::new(
            self.on_hsm(|h| h.random(crate::crypto::shares::SECRET_LEN as u32))
                .await?,
        );
        let secret = UnsealSecret::from_bytes(&random)
            .map_err(|e| ServiceError::Internal(format!("the token's random bytes: {e}")))?;
        drop(random);
        let shares =
            shares::split(&secret, m, n).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        Ok(Prepared {
            record: Self::record_of(actor, generation, kind, &secret, &shares, m, n)?,
            new_pin: Some(token_pin(&secret)),
            shares,
        })
    }

    fn record_of(
        actor: &Actor,
        generation: u32,
        kind: SealKind,
        secret: &UnsealSecret,
        shares: &[Share],
        m: u8,
        n: u8,
    ) -> Result<SealRecord, ServiceError> {
        let split_id = shares
            .first()
            .map(|s| s.split_id().to_string())
            .ok_or_else(|| ServiceError::Internal("the split made no shares".into()))?;
        Ok(SealRecord {
            generation,
            kind,
            threshold: m,
            shares: n,
            split_id,
            secret_check: secret.check_value(),
            share_checks: shares
                .iter()
                .map(|s| (s.index(), s.check_value()))
                .collect(),
            created_at: time::OffsetDateTime::now_utc(),
            created_by: actor.as_str().to_owned(),
        })
    }

    /// PIN (if it changes), then the row; the PIN is changed back if the row
    /// cannot be written.
    async fn commit(&self, p: Prepared) -> Result<Vec<Share>, ServiceError> {
        let Prepared {
            record,
            shares,
            new_pin,
        } = p;
        let hsm = self.hsm().clone();
        let old_pin = match &new_pin {
            Some(pin) => {
                let pin = pin.clone();
                let hsm = hsm.clone();
                Some(
                    tokio::task::spawn_blocking(move || hsm.change_user_pin(&pin))
                        .await
                        .map_err(|e| ServiceError::Internal(format!("HSM task failed: {e}")))??,
                )
            }
            None => None,
        };
        let stored = self.store().insert_seal(&record).await;
        let failure = match stored {
            Ok(true) => return Ok(shares),
            Ok(false) => ServiceError::Refused(
                "another initialization, rotation or re-key of the seal happened meanwhile".into(),
            ),
            Err(e) => ServiceError::Store(e),
        };
        if let Some(old) = old_pin {
            let back = tokio::task::spawn_blocking(move || hsm.change_user_pin(&old).map(drop))
                .await
                .map_err(|e| ServiceError::Internal(format!("HSM task failed: {e}")))?;
            if let Err(e) = back {
                return Err(ServiceError::Inconsistent(format!(
                    "the seal was not recorded ({failure}) and the token PIN could not be changed back ({e}); the security officer must reset the user PIN"
                )));
            }
        }
        Err(failure)
    }
}
