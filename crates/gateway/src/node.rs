//! The state one gateway node shares between its HTTP handlers and its
//! sessions: configuration, token verifier, hub, broker, presence, the
//! connection cap and the shutdown signal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenVerifier;
use crate::broker::{Broker, MemoryBroker};
use crate::config::Config;
use crate::hub::Hub;
use crate::presence::{MemoryPresence, Presence};

#[derive(Debug)]
pub struct Node {
    pub config: Config,
    pub verifier: TokenVerifier,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
    /// One permit per open session (`max_connections`).
    pub capacity: Arc<Semaphore>,
    /// Cancelled when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// Every connection and session task, awaited on shutdown.
    pub tasks: TaskTracker,
    next_session: AtomicU64,
}

impl std::fmt::Debug for dyn Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Broker({})", self.kind())
    }
}

impl std::fmt::Debug for dyn Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Presence")
    }
}

impl Node {
    /// A single node on the in-memory broker and presence.
    pub fn in_memory(config: Config) -> Result<Arc<Node>, String> {
        let hub = Arc::new(Hub::new());
        let broker = Arc::new(MemoryBroker::new(Arc::clone(&hub)));
        Node::new(config, hub, broker, Arc::new(MemoryPresence::new()))
    }

    pub fn new(
        config: Config,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn Presence>,
    ) -> Result<Arc<Node>, String> {
        let verifier = TokenVerifier::new(&config.jwt)?;
        Ok(Arc::new(Node {
            capacity: Arc::new(Semaphore::new(config.max_connections)),
            verifier,
            hub,
            broker,
            presence,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_session: AtomicU64::new(1),
            config,
        }))
    }

    /// A node-local session number.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Open sessions.
    pub fn open_sessions(&self) -> usize {
        self.config.max_connections - self.capacity.available_permits()
    }

    pub fn is_draining(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}
