//! `capstan-agent`: the node agent binary. A thin shell over `capstan_agent::cli`.

use clap::Parser;

fn main() {
    let cli = capstan_agent::cli::Cli::parse();
    std::process::exit(capstan_agent::cli::run(cli));
}
