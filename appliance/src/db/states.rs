//! The states stored in `results.sqlite`, as Rust enums. Each is written and read as the
//! lowercase word the table's `CHECK` constraint allows; a stored word the code does not know
//! is a [`FromSqlError`] naming it, never a default.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// A stored word that is none of a state's known values.
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {value:?} (known: {known})")]
pub struct UnknownState {
    /// Which state it was read as ("job state").
    pub what: &'static str,
    pub value: String,
    /// The known values, comma-separated.
    pub known: String,
}

/// An enum stored as one of a fixed set of words, with `as_str`, `Display` (padding like a
/// `str`), `FromStr`, rusqlite's `ToSql`/`FromSql` and serde's `Serialize` (as the word).
macro_rules! stored_state {
    (
        $(#[$doc:meta])*
        $name:ident ($what:literal) {
            $($(#[$variant_doc:meta])* $variant:ident = $word:literal,)+
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$variant_doc])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stored word.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($word => Ok($name::$variant),)+
                    other => Err(UnknownState {
                        what: $what,
                        value: other.to_string(),
                        known: Self::ALL
                            .iter()
                            .map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                }
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e: UnknownState| FromSqlError::Other(Box::new(e)))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

stored_state! {
    /// Where an inference job is (`jobs.state`).
    JobState ("job state") {
        /// Waiting for the worker.
        Queued = "queued",
        /// The worker has it (a crash leaves it here; start-up queues it again).
        Running = "running",
        /// Its result is stored.
        Done = "done",
        /// It ran and failed; `error` says why.
        Failed = "failed",
        /// The queue was full; never ran.
        Rejected = "rejected",
    }
}

impl JobState {
    /// The states of a job that waits for or holds the worker.
    pub const WAITING: [JobState; 2] = [JobState::Queued, JobState::Running];
}

stored_state! {
    /// Where an outbox entry is (`outbox.state`).
    OutboxState ("outbox state") {
        /// To be sent (again) at `next_attempt_at_ms`.
        Pending = "pending",
        /// The destination stored it.
        Sent = "sent",
        /// Refused or given up; only `appliance outbox retry` sends it again.
        Failed = "failed",
    }
}

stored_state! {
    /// Whether a labelled case was taken as a label (`cases.state`).
    CaseState ("case state") {
        Accepted = "accepted",
        /// Not a label; `reason` says why.
        Refused = "refused",
    }
}

stored_state! {
    /// How a labelled case arrived (`cases.origin`).
    CaseOrigin ("case origin") {
        /// Over DICOM, taken in when its study completed.
        Dicom = "dicom",
        /// From a file, `appliance cases import`.
        Import = "import",
    }
}

stored_state! {
    /// What a labelled case labels (`cases.kind`).
    CaseKind ("case kind") {
        /// A SEG: a label per voxel of its series.
        Segmentation = "segmentation",
        /// A verified SR: the model's finding present or absent.
        Classification = "classification",
    }
}

stored_state! {
    /// What the learner does with a case (`case_splits.split`).
    Split ("case split") {
        /// Trained on.
        Train = "train",
        /// Only judged on, never trained on.
        Holdout = "holdout",
    }
}

stored_state! {
    /// The gate's verdict on a fine-tuned head (`heads.state`).
    HeadState ("head state") {
        Accepted = "accepted",
        Refused = "refused",
    }
}

stored_state! {
    /// How a learning run ended (`learn_runs.outcome`).
    LearnOutcome ("learning run outcome") {
        /// Its head passed the gate and is the champion.
        Accepted = "accepted",
        /// Its head was refused by the gate.
        Refused = "refused",
        /// No head: the run failed, with the reason.
        Failed = "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn round_trip<T: ToSql + FromSql + PartialEq + std::fmt::Debug + Copy>(all: &[T]) {
        let conn = Connection::open_in_memory().unwrap();
        for value in all {
            let back: T = conn.query_row("SELECT ?1", [value], |r| r.get(0)).unwrap();
            assert_eq!(back, *value);
        }
    }

    #[test]
    fn every_state_reads_back_as_the_value_written() {
        round_trip(JobState::ALL);
        round_trip(OutboxState::ALL);
        round_trip(CaseState::ALL);
        round_trip(CaseOrigin::ALL);
        round_trip(CaseKind::ALL);
        round_trip(Split::ALL);
        round_trip(HeadState::ALL);
        round_trip(LearnOutcome::ALL);
    }

    #[test]
    fn an_unknown_stored_state_is_an_error_naming_the_value() {
        let conn = Connection::open_in_memory().unwrap();
        let err = conn
            .query_row("SELECT 'finished'", [], |r| r.get::<_, JobState>(0))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, rusqlite::Error::FromSqlConversionFailure(..)),
            "{err:?}"
        );
        assert!(text.contains("unknown job state \"finished\""), "{text}");
        // A number is not a state either.
        assert!(conn
            .query_row("SELECT 3", [], |r| r.get::<_, OutboxState>(0))
            .is_err());
    }

    #[test]
    fn a_state_prints_as_its_stored_word_and_pads_like_one() {
        assert_eq!(format!("{:<9}|", CaseState::Accepted), "accepted |");
        assert_eq!(
            serde_json::to_string(&JobState::Rejected).unwrap(),
            "\"rejected\""
        );
    }
}
