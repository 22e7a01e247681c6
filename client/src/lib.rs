//! The KMS provisioning API as a provisioning service sees it: the wire
//! types (`wire`) and a reference mTLS client (`client`) that signs nothing,
//! trusts nothing but its pinned CA and the KMS's response-signing key, and
//! checks every response's detached signature before handing it back.
//!
//! The server builds its OpenAPI document from these same types (feature
//! `openapi`), so the client and the document cannot drift apart.

pub mod client;
pub mod wire;

pub use client::{
    AutoHeader, ClientConfig, ClientError, ProvisioningClient, RawReply, RawRequest,
    ResponseVerifier, SignatureCheck,
};
