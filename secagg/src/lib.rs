//! Secure aggregation of weight deltas (SecAgg+): filled in by its issue.
