//! Validation (filled next).
