//! One module per subcommand group; each owns its clap arguments and its `run`.
pub mod inspect;
pub mod ova;
pub mod ovf;
pub mod vmdk;
