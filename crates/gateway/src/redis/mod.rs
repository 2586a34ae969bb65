//! Talking to Redis, shared by every Redis-backed part (broker, history,
//! presence, occupancy, webhooks): the connection modes and the pooled
//! link (`link`).

pub mod link;
