//! Model packages, preprocessing, inference backends and fine-tuning. Empty until the inference
//! issue lands: nothing here runs yet, and nothing depends on it.
