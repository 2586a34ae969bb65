//! The admin UI under `/admin/`. This file is a stand-in until the admin
//! server's routing and login land: it declares the cluster-wide pages'
//! handlers, which the router calls after its session check.
//!
//! - `nodes`: `GET /admin/api/nodes`, every live node's figures.
//! - `tail`: `GET /admin/api/tail?channel=`, a live tail of one channel.
//! - `users`: `GET /admin/api/user?id=`, a user's connections.

pub mod nodes;
pub mod tail;
pub mod users;
