//! TURN relay (RFC 8656): a sans-IO allocation core and a tokio shell.
//!
//! Not built yet. The mux already routes terminated connections whose first
//! bytes are STUN framing to the service registered under
//! [`mux::service::ServiceKind::Turn`](../mux/service/index.html); the relay
//! will register there without depending on the mux crate.
