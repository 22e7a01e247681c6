//! The HSM layer: everything that touches PKCS#11.
//!
//! It speaks the domain (`KeySpec`, `KeyRef`, `WrapAlg`, `MacAlg`), never
//! `cryptoki::Mechanism`, so the rest of the KMS cannot ask for a mechanism we
//! have not vetted. One login per process (SoftHSM login state is per token
//! for the whole process), a bounded pool of sessions, each operation holding
//! one exclusively. Every call here blocks: async callers go through
//! `tokio::task::spawn_blocking`.

mod error;
mod keys;
mod ops;
mod pool;
mod raw;
mod templates;

pub use error::HsmError;
pub use keys::{KeyAttributes, TokenObject};
pub use ops::{MacAlg, SignAlg, WrapAlg};
pub use raw::DeriveAlg;
pub use templates::{KeySpec, Trust};

use crate::model::{Algorithm, ObjectId};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use pool::{PooledSession, SessionPool};
use std::collections::HashMap;
use std::sync::RwLock;
use zeroize::Zeroizing;

/// Who logs in: normal key work uses the user; only the security officer can
/// create CKA_TRUSTED keys (a ceremony step under dual control).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    SecurityOfficer,
}

/// Where the module and token are.
#[derive(Clone)]
pub struct HsmConfig {
    pub module: String,
    pub token_label: String,
    pub pin: Zeroizing<String>,
    pub role: Role,
    pub max_sessions: usize,
}

impl std::fmt::Debug for HsmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmConfig")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"<redacted>")
            .field("role", &self.role)
            .field("max_sessions", &self.max_sessions)
            .finish()
    }
}

/// A reference to a live key version on the token. A destroyed key version
/// has no `KeyRef`: the service only builds one from a non-tombstoned row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef {
    pub object_id: ObjectId,
    pub algorithm: Algorithm,
}

/// A logged-in token.
pub struct Hsm {
    pkcs11: Pkcs11,
    slot: Slot,
    pool: SessionPool,
    raw: raw::RawModule,
    /// CKA_ID -> handle for token objects; handles stay valid across
    /// sessions of one process, and the lookup is a C_FindObjects round trip.
    handles: RwLock<HashMap<(ObjectId, u64), ObjectHandle>>,
    role: Role,
    /// The PIN this process logged in with. C_SetPIN needs the current PIN
    /// even in a logged-in session, and sealing (`seal`) replaces a PIN the
    /// service was opened with (read from a file that is then deleted), so
    /// it is kept, wiped on drop, and never leaves this module.
    login_pin: std::sync::Mutex<Zeroizing<String>>,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("slot", &self.slot)
            .field("role", &self.role)
            .finish()
    }
}

impl Hsm {
    /// Load the module, find the token by label and log in once.
    pub fn open(cfg: &HsmConfig) -> Result<Hsm, HsmError> {
        let module_err = |detail: String| HsmError::Module {
            path: cfg.module.clone(),
            detail,
        };
        if !std::path::Path::new(&cfg.module).exists() {
            return Err(module_err("no such file".into()));
        }
        let pkcs11 = Pkcs11::new(&cfg.module).map_err(|e| module_err(e.to_string()))?;
        pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| module_err(e.to_string()))?;
        let raw = raw::RawModule::load(&cfg.module)?;
        let mut slot = None;
        for s in pkcs11.get_slots_with_initialized_token()? {
            if pkcs11.get_token_info(s)?.label().trim_end() == cfg.token_label {
                slot = Some(s);
                break;
            }
        }
        let slot = slot.ok_or_else(|| HsmError::TokenNotFound(cfg.token_label.clone()))?;
        let first = pkcs11.open_rw_session(slot)?;
        let user = match cfg.role {
            Role::User => UserType::User,
            Role::SecurityOfficer => UserType::So,
        };
        let pin = AuthPin::from(cfg.pin.as_str());
        match first.login(user, Some(&pin)) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Hsm {
            pkcs11,
            slot,
            pool: SessionPool::new(first, cfg.max_sessions),
            raw,
            handles: RwLock::new(HashMap::new()),
            role: cfg.role,
            // Only the user's PIN is ever changed here; the officer's is
            // not kept.
            login_pin: std::sync::Mutex::new(match cfg.role {
                Role::User => cfg.pin.clone(),
                Role::SecurityOfficer => Zeroizing::new(String::new()),
            }),
        })
    }

    /// C_SetPIN on the user's PIN, from the PIN this process logged in
    /// with to `new` (sealing and re-keying the seal, issue 5). Only under
    /// the user's login: the security officer's PIN is not sealed. Returns
    /// the PIN replaced, so a caller whose next step fails can change it back.
    pub fn change_user_pin(&self, new: &Zeroizing<String>) -> Result<Zeroizing<String>, HsmError> {
        if self.role != Role::User {
            return Err(HsmError::invalid(
                "the user PIN is changed only under the user's login",
            ));
        }
        let mut current = self.login_pin.lock().map_err(|_| HsmError::PoolClosed)?;
        let old = AuthPin::from(current.as_str());
        let next = AuthPin::from(new.as_str());
        self.session()?.set_pin(&old, &next)?;
        Ok(std::mem::replace(&mut *current, new.clone()))
    }

    /// Whether `pin` is the PIN this process is logged in with (compared in
    /// constant time): lets a re-key confirm that presented shares are the
    /// ones that sealed this token before changing anything.
    pub fn is_login_pin(&self, pin: &str) -> bool {
        self.login_pin
            .lock()
            .map(|p| crate::crypto::kcv::ct_eq(p.as_bytes(), pin.as_bytes()))
            .unwrap_or(false)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Number of sessions currently open (for metrics and benchmarks).
    pub fn sessions_open(&self) -> usize {
        self.pool.size()
    }

    pub(crate) fn session(&self) -> Result<PooledSession<'_>, HsmError> {
        self.pool
            .get(|| -> Result<Session, HsmError> { Ok(self.pkcs11.open_rw_session(self.slot)?) })
    }

    /// Whether this process is still logged in to the token (the server's
    /// readiness): a session's state says so without touching any key, and
    /// a token that was removed or re-initialized answers with an error.
    pub fn logged_in(&self) -> Result<bool, HsmError> {
        use cryptoki::session::SessionState;
        let state = self.session()?.get_session_info()?.session_state();
        Ok(matches!(
            state,
            SessionState::RoUser | SessionState::RwUser | SessionState::RwSecurityOfficer
        ))
    }

    /// Random bytes from the token's generator (KM-1).
    pub fn random(&self, len: u32) -> Result<Vec<u8>, HsmError> {
        Ok(self.session()?.generate_random_vec(len)?)
    }
}
