//! Shared fixtures for the end-to-end tests.
pub mod client;
pub mod fixture;
pub mod people;
pub mod pg;
pub mod pki;
pub mod reference;
pub mod scan;
pub mod store_suite;
pub mod token;
pub mod vectors;
