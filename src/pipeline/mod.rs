//! The sync pipeline, one module per stage, in the order data flows through them:
//!
//! ```text
//! capture (SQL triggers, migrations/) → fanout (university/course/statement → marks)
//!   → claim → targets → load → encode → ship (retrying) → classify → acknowledge
//! ```
//!
//! [`batch`] strings claim → acknowledge into one batch; [`crate::sync`] adds fan-out and
//! the reindex chunks into a step. Tests can drive the stages one by one.

pub mod acknowledge;
pub mod batch;
pub mod claim;
pub mod classify;
pub mod encode;
pub mod fanout;
pub mod lease;
pub mod load;
pub mod ship;
pub mod targets;

use crate::{document::StudentDoc, search::SearchError};

/// What a batch (or a reindex chunk) writes for one student: the whole document as the
/// database has it now, or its deletion (the student is gone).
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Index(StudentDoc),
    Delete,
}

impl Op {
    /// The document, unless the student is gone.
    pub fn document(&self) -> Option<&StudentDoc> {
        match self {
            Op::Index(doc) => Some(doc),
            Op::Delete => None,
        }
    }

    pub fn into_document(self) -> Option<StudentDoc> {
        match self {
            Op::Index(doc) => Some(doc),
            Op::Delete => None,
        }
    }

    /// The `_bulk` action it becomes.
    pub fn action(&self) -> Action {
        match self {
            Op::Index(_) => Action::Index,
            Op::Delete => Action::Delete,
        }
    }
}

/// An [`Op`] without its document: what an encoded op, and its answer, are about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Index,
    Delete,
}

/// A dirty mark as claimed: the student and the sequence number the mark had at claim time.
/// Acknowledging succeeds only if the mark still carries this number (protocol invariant 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub student_id: i64,
    pub seq: i64,
}

/// Why a stage could not do its work. Either way the marks stay, and a later step retries.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error("alias {0} has no index and no rebuild is running yet; the next sync step starts one")]
    NoIndex(String),
}
