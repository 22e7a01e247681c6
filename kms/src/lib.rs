//! The KMS core: HSM-backed key lifecycle for OTA card provisioning.
//!
//! Layers, outermost first: `cli` (binary) -> `service` (use cases: policy,
//! HSM, store, audit in one place) -> `hsm` (PKCS#11, the only place with
//! `unsafe`) and `store` (sqlx metadata, never key material). `model` holds
//! the validated domain types all layers share; `crypto` the few software
//! computations done on values that are in host memory anyway (component
//! entry and check values).

pub mod audit;
pub mod authz;
pub mod config;
pub mod crypto;
pub mod derivation;
pub mod hsm;
pub mod model;
pub mod policy;
pub mod seal;
pub mod server;
pub mod service;
pub mod store;
