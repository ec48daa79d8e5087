//! portwatch: who holds that port, and why does the kernel refuse?

mod address;
mod btf;
mod cgroup;
mod cli;
mod demo;
mod docker_proxy;
mod docs;
mod errno;
mod event;
mod explain;
mod facts;
mod journal;
mod layout;
mod limits;
mod loader;
mod metrics;
mod netns;
mod output;
mod ports;
mod prediction;
mod procfs;
mod query;
mod settings;
mod socket_units;
mod sockets;
mod sockinfo;
mod tables;
mod trace;
mod who;
mod why;
mod workload;

use std::io::{self, Write as _};

use clap::Parser as _;

use crate::{
    cli::{Cli, Command},
    settings::TraceSettings,
};

fn main() {
    let cli = Cli::parse();
    let docs = match &cli.command {
        Command::Completions { shell } => Some(docs::completions(*shell, &mut io::stdout())),
        Command::Man => Some(docs::man(&mut io::stdout())),
        _ => None,
    };
    match docs {
        Some(Err(e)) if e.kind() != io::ErrorKind::BrokenPipe => {
            fail(&anyhow::Error::new(e).context("writing to stdout"))
        }
        Some(_) => return,
        None => {}
    }
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
    match limits::raise_open_files() {
        Ok(n) => log::debug!("open-files limit: {n}"),
        Err(e) => log::debug!("raising the open-files limit: {e}"),
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&anyhow::anyhow!(e).context("starting the runtime")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Trace(args) => trace::run(TraceSettings::resolve(args)?).await,
            Command::Who(args) => who::run(args),
            Command::Why(args) => why::run(args),
            Command::Ports(args) => ports::run(args),
            Command::Demo(args) => demo::run(args),
            Command::Completions { .. } | Command::Man => Ok(()),
        }
    });
    match result {
        Ok(()) => {}
        // A closed pipe (`| head`, `| true`) is a normal way to stop reading, wherever the
        // write was.
        Err(e) if broken_pipe(&e) => std::process::exit(0),
        Err(e) => fail(&e),
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// One line (plus the fix, where there is one) instead of a backtrace. Stderr may be closed
/// too; that is no reason to panic.
fn fail(e: &anyhow::Error) -> ! {
    let _ = writeln!(io::stderr(), "portwatch: error: {e:#}");
    std::process::exit(1);
}
