//! Server side of federated learning (rounds, aggregation, signing). Empty until the federation
//! issues land: nothing here runs yet.
