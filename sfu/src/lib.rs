//! WebRTC selective forwarding unit on str0m.
//!
//! Not built yet: rooms, signaling and sessions arrive with the SFU capability.
