//! The node's HTTP side: the accept loop and routes (`server`), the checks
//! before a WebSocket upgrade (`handshake`), the server API (`api`, its
//! `POST /api/batch` in `batch`), the demo page (`demo`), the admin UI
//! (`admin`), server-sent events streams and their commands (`stream`) and
//! the response bodies they share (`response`).

pub mod admin;
pub mod api;
pub mod batch;
pub mod demo;
pub mod handshake;
pub mod response;
pub mod server;
pub mod stream;
