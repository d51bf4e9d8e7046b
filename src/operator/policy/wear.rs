//! Placeholder: the wear policy.
