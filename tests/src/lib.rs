//! Shared fixtures for the end-to-end tests.
pub mod token;
pub mod reference;
pub mod vectors;
pub mod fixture;
pub mod pg;
pub mod scan;
pub mod store_suite;
