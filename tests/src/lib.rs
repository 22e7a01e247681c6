//! Shared fixtures for the end-to-end tests.
pub mod fixture;
pub mod pg;
pub mod reference;
pub mod scan;
pub mod store_suite;
pub mod token;
pub mod vectors;
