//! The box's front door on TCP :443.
pub mod peek;
