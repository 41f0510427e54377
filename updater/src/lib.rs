//! Device side of the fleet link (MQTT over mutual TLS: weight deltas, signed updates, A/B
//! install). Empty until the federation issues land: nothing here runs yet.
