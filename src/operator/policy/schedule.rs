//! Placeholder: the schedule policy.
