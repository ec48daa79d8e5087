//! portwatch's developer tasks as a library, so the scenario primitives (network namespaces,
//! sockets, holder processes, a portwatch child, assertions) can be reused by new scenarios
//! and new tasks. The `xtask` binary (main.rs) is only the command line on top.

pub mod bench;
pub mod cmd;
pub mod deploy;
pub mod dist;
pub mod run;
pub mod scenarios;
pub mod setup;
pub mod test;
pub mod vm;
