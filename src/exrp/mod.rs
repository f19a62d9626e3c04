//! Role `exrp`: the EX Recording Provider.

pub mod job;
pub mod ogg;
pub mod queue;
