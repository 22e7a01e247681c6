//! Custodian ceremony tooling (issue 5 builds the scripted ceremonies here).
