//! Talking to Redis, shared by every Redis-backed part (broker, history,
//! presence, occupancy, webhooks): which Redis and the clients per mode
//! (`target`, which configuration parses `redis_url` with and which depends
//! on nothing else in the crate), the pooled link that runs commands
//! (`link`), Pub/Sub channel names (`pubsub`) and link health (`health`).

pub mod health;
pub mod link;
pub mod pubsub;
pub mod target;
