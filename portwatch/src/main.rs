//! portwatch: who holds that port, and why does the kernel refuse?

mod btf;
mod cgroup;
mod cli;
mod errno;
mod event;
mod explain;
mod facts;
mod layout;
mod loader;
mod netns;
mod output;
mod procfs;
mod sockets;
mod sockinfo;
mod tables;
mod trace;
mod who;

use clap::Parser as _;

use crate::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    // -v is about portwatch's own steps; aya's relocation chatter stays at warnings.
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .filter_module(
            "portwatch",
            if cli.verbose {
                log::LevelFilter::Debug
            } else {
                log::LevelFilter::Warn
            },
        )
        .format_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&anyhow::anyhow!(e).context("starting the runtime")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Trace(args) => trace::run(args).await,
            Command::Who(args) => who::run(args),
        }
    });
    if let Err(e) = result {
        fail(&e);
    }
}

/// One line (plus the fix, where there is one) instead of a backtrace.
fn fail(e: &anyhow::Error) -> ! {
    eprintln!("portwatch: error: {e:#}");
    std::process::exit(1);
}
