//! `capstan-agent`: the node agent binary. A thin shell over `capstan_agent::cli`.

fn main() {
    let code = match capstan_agent::cli::parse(std::env::args_os()) {
        Ok(cli) => capstan_agent::cli::run(cli),
        Err(code) => code,
    };
    std::process::exit(code);
}
