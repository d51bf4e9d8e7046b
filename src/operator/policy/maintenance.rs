//! Placeholder: the maintenance policy.
