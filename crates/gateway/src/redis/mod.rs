//! Talking to Redis, shared by every Redis-backed part (broker, history,
//! presence, occupancy, webhooks): the connection modes and the pooled
//! link (`link`), Pub/Sub channel names (`pubsub`) and link health
//! (`health`).

pub mod health;
pub mod link;
pub mod pubsub;
