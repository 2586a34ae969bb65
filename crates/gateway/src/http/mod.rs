//! The node's HTTP side: the accept loop and routes (`server`), the checks
//! before a WebSocket upgrade (`handshake`), the server API (`api`), the
//! demo page (`demo`) and the JSON error bodies they share (`response`).

pub mod api;
pub mod demo;
pub mod handshake;
pub mod response;
pub mod server;
