//! The sync pipeline, one module per stage, in the order data flows through them:
//!
//! ```text
//! capture (SQL triggers, migrations/0002) → claim → fanout (university/course → students)
//!   → load → encode → ship (with retry) → classify → acknowledge
//! ```
//!
//! [`crate::engine`] strings the stages together; tests can drive them one by one.

pub mod acknowledge;
pub mod claim;
pub mod classify;
pub mod encode;
pub mod fanout;
pub mod load;
pub mod retry;
pub mod ship;

/// A dirty mark as claimed: the student and the sequence number the mark had at claim time.
/// Acknowledging succeeds only if the mark still carries this number (protocol invariant 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub student_id: i64,
    pub seq: i64,
}
