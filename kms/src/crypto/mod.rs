//! Software cryptography on values that are already in host memory.
//!
//! During key-component entry the custodians' components are typed into
//! the host, so combining them and computing check values in software
//! exposes nothing new; everything else (generation, derivation, wrapping,
//! MACs) happens inside the HSM and is not here. Keeping this module small
//! keeps the set of places that ever hold clear key material small.
//!
//! - [`kcv`]: key check values (TDES, AES zero block, AES-CMAC per
//!   X9.24-1:2017, GlobalPlatform).
//! - [`component`]: XOR components under split knowledge, their
//!   combination into a [`ClearKey`] for HSM import, weak-key refusal.
//! - [`shares`]: Shamir M-of-N shares of the unseal secret, their typed
//!   text form and check values.
//! - [`approval`]: approvers' ECDSA P-256 signatures over what they
//!   approved (dual control, invariant 3).
//! - [`pin_hash`]: Argon2id hashes of custodian and officer PINs (they are
//!   typed into the host to log in, and stored only hashed).

pub mod approval;
pub mod component;
pub mod kcv;
pub mod pin_hash;
pub mod shares;

pub use component::{
    combine, verify_component_kcv, verify_key_kcv, weakness, ClearKey, Component, ComponentError,
    WeakKey,
};
pub use kcv::{aes_cmac_kcv, aes_gp_kcv, aes_kcv, tdes_kcv, verify_kcv, Kcv, KcvError, KcvMethod};
pub use pin_hash::{PinHash, PinHashError, PinHasher};
pub use shares::{CheckValue, Share, SharesError, SplitId, UnsealSecret};
