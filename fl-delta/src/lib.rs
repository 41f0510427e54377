//! What happens to a weight delta between the learner and the wire: filled in by its issue.
