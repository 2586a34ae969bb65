//! Talking to Redis, shared by every Redis-backed part (broker, history,
//! presence, occupancy, webhooks): which Redis and the clients per mode
//! (`target`, which configuration parses `redis_url` with and which depends
//! on nothing else in the crate), the shared link that runs commands
//! (`link`), what a server says of its replication role (`replication`),
//! Pub/Sub channel names (`pubsub`), link health (`health`) and, on a
//! Redis Cluster, the check that every slot has a primary (`shards`).

pub mod health;
pub mod link;
pub mod pubsub;
pub mod replication;
pub mod shards;
pub mod target;
