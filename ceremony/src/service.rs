//! The KMS the ceremony runs against: the service under the user's login,
//! switched to the security officer's for the steps that need it (marking a
//! KEK trusted) and back. SoftHSM holds one login kind per process, so a
//! switch closes one service before opening the other; the SO login's
//! records carry no MAC and are countersigned by the user login that
//! follows, as the `kms` command does.
//!
//! A sealed deployment (a seal in the database) opens nothing until M
//! custodians present their shares (`shares-in`), through the service's
//! [`Unsealer`], which records each presentation. The token PIN derived
//! from the shares is then kept, in a zeroizing buffer, for the rest of the
//! run only: switching back from the SO login needs it again.

use kms::config::Config;
use kms::crypto::Share;
use kms::hsm::{Hsm, HsmConfig, Role};
use kms::policy::KeyPolicy;
use kms::seal::{UnsealError, UnsealProgress, Unsealer};
use kms::service::{
    renew_lost_system_keys, Actor, BackupFile, CustodianSettings, KeyService, ServiceError,
};
use kms::store::Store;
use std::sync::Arc;

/// How to reach the token and the database.
#[derive(Clone)]
pub struct KmsAccess {
    pub user: HsmConfig,
    /// Needed only by ceremonies that mark a KEK trusted.
    pub security_officer: Option<HsmConfig>,
    pub database_url: String,
    pub policy: KeyPolicy,
    /// PIN policy and hasher (tests use cheaper Argon2id parameters).
    pub custodians: Option<CustodianSettings>,
}

impl KmsAccess {
    /// From `kms.toml` (or $KMS_CONFIG), as the `kms` command reads it.
    pub fn from_config(cfg: &Config) -> anyhow::Result<KmsAccess> {
        Ok(KmsAccess {
            user: cfg.hsm(Role::User)?,
            security_officer: cfg.hsm(Role::SecurityOfficer).ok(),
            database_url: cfg.database_url.clone(),
            policy: KeyPolicy::load(&cfg.policy_dir)?,
            custodians: None,
        })
    }
}

/// Where acts of a ceremony come from, in the trail.
const SOURCE: &str = "ceremony";

pub struct Kms {
    access: KmsAccess,
    svc: Option<KeyService>,
    /// Set while the deployment is sealed.
    unsealer: Option<Unsealer>,
}

fn unseal_error(e: UnsealError) -> ServiceError {
    match e {
        UnsealError::Service(s) => s,
        UnsealError::Store(s) => ServiceError::Store(s),
        UnsealError::Audit(a) => ServiceError::Audit(a),
        other if other.is_refusal() => ServiceError::Refused(other.to_string()),
        other => ServiceError::Internal(other.to_string()),
    }
}

impl Kms {
    /// For the recovery ceremony on a replacement token: open under the
    /// security officer's login, since the user's login cannot open a
    /// service before the KMS's own audit keys are back (which needs the
    /// backup KEK the officer recovers first). A sealed deployment is
    /// refused: its user PIN comes from the unseal shares, so it is
    /// unsealed on the old database first (`kms-ceremony run unseal`) only
    /// once a token exists; recover the token unsealed.
    pub async fn open_for_recovery(access: KmsAccess) -> Result<Kms, ServiceError> {
        let store = Store::connect(&access.database_url).await?;
        if Unsealer::load(store, SOURCE)
            .await
            .map_err(unseal_error)?
            .is_some()
        {
            return Err(ServiceError::Refused(
                "this deployment is sealed: the recovery ceremony runs on an unsealed deployment"
                    .into(),
            ));
        }
        let svc = open_service(&access, Role::SecurityOfficer).await?;
        Ok(Kms {
            access,
            svc: Some(svc),
            unsealer: None,
        })
    }

    /// From the security officer's login to the user's on a replacement
    /// token: the KMS's own keys lost with the old token are put back first
    /// (the audit MAC key from `backup`, new signing keys; recorded), then
    /// the service opens and countersigns what the officer's login and the
    /// renewal wrote without a MAC.
    pub async fn user_on_new_token(
        &mut self,
        actor: &Actor,
        backup: &BackupFile,
    ) -> Result<(), ServiceError> {
        if self.role() == Some(Role::User) {
            return Ok(());
        }
        let mut unmaced = Vec::new();
        if let Some(so) = self.svc.take() {
            let closed = so.close().await;
            unmaced = so.audit().take_unmaced();
            drop(so);
            closed?;
        }
        let cfg = self.access.user.clone();
        let store = Store::connect(&self.access.database_url).await?;
        let hsm = tokio::task::spawn_blocking(move || Hsm::open(&cfg))
            .await
            .map_err(|e| ServiceError::Internal(format!("opening the token: {e}")))?
            .map_err(ServiceError::Hsm)?;
        let hsm = Arc::new(hsm);
        let renewal = renew_lost_system_keys(hsm.clone(), &store, actor, Some(backup)).await?;
        let svc = KeyService::open(hsm, store, self.access.policy.clone(), SOURCE).await?;
        let svc = match &self.access.custodians {
            Some(s) => svc.with_custodian_settings(s.clone()),
            None => svc,
        };
        svc.audit()
            .countersign(unmaced)
            .await
            .map_err(ServiceError::Audit)?;
        renewal.countersign(&svc).await?;
        self.svc = Some(svc);
        Ok(())
    }

    /// Open the service, or, when the deployment is sealed, wait for
    /// shares.
    pub async fn open(access: KmsAccess) -> Result<Kms, ServiceError> {
        let store = Store::connect(&access.database_url).await?;
        if let Some(unsealer) = Unsealer::load(store, SOURCE).await.map_err(unseal_error)? {
            return Ok(Kms {
                access,
                svc: None,
                unsealer: Some(unsealer),
            });
        }
        let svc = open_service(&access, Role::User).await?;
        Ok(Kms {
            access,
            svc: Some(svc),
            unsealer: None,
        })
    }

    pub fn svc(&self) -> Result<&KeyService, ServiceError> {
        if self.unsealer.is_some() {
            return Err(ServiceError::Refused(
                "the KMS is sealed: custodians present their shares first (a shares-in step)"
                    .into(),
            ));
        }
        self.svc
            .as_ref()
            .ok_or_else(|| ServiceError::Internal("the KMS is not open".into()))
    }

    pub fn is_sealed(&self) -> bool {
        self.unsealer.is_some()
    }

    /// M, while sealed.
    pub fn seal_threshold(&self) -> Option<u8> {
        self.unsealer.as_ref().map(|u| u.record().threshold)
    }

    /// One custodian's share, presented to the unsealer (recorded,
    /// accepted or refused).
    pub async fn present_share(
        &mut self,
        share_text: &str,
        presenter: &str,
    ) -> Result<UnsealProgress, ServiceError> {
        let u = self
            .unsealer
            .as_mut()
            .ok_or_else(|| ServiceError::Refused("the KMS is not sealed".into()))?;
        u.present(share_text, presenter).await.map_err(unseal_error)
    }

    /// With M shares presented, log in and open the service; `shares` (the
    /// same ones) give the token PIN for later re-logins of this run.
    pub async fn unseal(&mut self, shares: &[Share]) -> Result<(), ServiceError> {
        let u = self
            .unsealer
            .as_mut()
            .ok_or_else(|| ServiceError::Refused("the KMS is not sealed".into()))?;
        let svc = u
            .open(self.access.user.clone(), self.access.policy.clone(), SOURCE)
            .await
            .map_err(unseal_error)?;
        let secret = kms::crypto::shares::combine(shares)
            .map_err(|e| ServiceError::Refused(e.to_string()))?;
        self.access.user.pin = kms::seal::token_pin(&secret);
        drop(secret);
        self.unsealer = None;
        self.svc = Some(match &self.access.custodians {
            Some(s) => svc.with_custodian_settings(s.clone()),
            None => svc,
        });
        Ok(())
    }

    /// After the seal was initialized or re-keyed in this run: the token
    /// PIN is now the one derived from the new secret.
    pub fn set_user_pin(&mut self, pin: zeroize::Zeroizing<String>) {
        self.access.user.pin = pin;
    }

    pub fn role(&self) -> Option<Role> {
        self.svc.as_ref().map(|s| s.hsm().role())
    }

    /// Switch to the security officer's login.
    pub async fn security_officer(&mut self) -> Result<(), ServiceError> {
        if self.role() == Some(Role::SecurityOfficer) {
            return Ok(());
        }
        if let Some(svc) = self.svc.take() {
            svc.close().await?;
        }
        self.svc = Some(open_service(&self.access, Role::SecurityOfficer).await?);
        Ok(())
    }

    /// Back to the user's login, countersigning what the SO login wrote.
    pub async fn user(&mut self) -> Result<(), ServiceError> {
        if self.role() == Some(Role::User) {
            return Ok(());
        }
        let mut unmaced = Vec::new();
        if let Some(so) = self.svc.take() {
            // Its close record is written unmaced too, so it is taken last.
            let closed = so.close().await;
            unmaced = so.audit().take_unmaced();
            drop(so);
            closed?;
        }
        let user = open_service(&self.access, Role::User).await?;
        user.audit()
            .countersign(unmaced)
            .await
            .map_err(ServiceError::Audit)?;
        self.svc = Some(user);
        Ok(())
    }

    /// Close: back to the user's login, record the stop, sign the head.
    pub async fn close(mut self) -> Result<(), ServiceError> {
        if self.unsealer.is_some() {
            return Ok(());
        }
        self.user().await?;
        if let Some(svc) = self.svc.take() {
            svc.close().await?;
        }
        Ok(())
    }
}

async fn open_service(access: &KmsAccess, role: Role) -> Result<KeyService, ServiceError> {
    let cfg = match role {
        Role::User => access.user.clone(),
        Role::SecurityOfficer => access.security_officer.clone().ok_or_else(|| {
            ServiceError::Refused(
                "this step needs the security officer's login: configure hsm.so_pin (or KMS_SO_PIN_FILE)"
                    .into(),
            )
        })?,
    };
    let store = Store::connect(&access.database_url).await?;
    let hsm = tokio::task::spawn_blocking(move || Hsm::open(&cfg))
        .await
        .map_err(|e| ServiceError::Internal(format!("opening the token: {e}")))?
        .map_err(ServiceError::Hsm)?;
    let svc = KeyService::open(Arc::new(hsm), store, access.policy.clone(), SOURCE).await?;
    Ok(match &access.custodians {
        Some(s) => svc.with_custodian_settings(s.clone()),
        None => svc,
    })
}
