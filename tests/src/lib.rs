//! Shared fixtures for the end-to-end tests.
pub mod token;
pub mod reference;
pub mod vectors;
