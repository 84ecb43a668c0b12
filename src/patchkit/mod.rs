//! The PatchKit API v1 client.
//!
//! Owns HTTP and JSON: typed requests and responses, error classes, retries
//! and the chunk upload engine. Knows nothing about sled, notify or rules.

mod key;

pub use key::ApiKey;
