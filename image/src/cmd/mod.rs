//! One module per subcommand group; each owns its clap arguments and its `run`.
pub mod build;
pub mod cache;
pub mod image;
pub mod inspect;
pub mod lab;
pub mod ova;
pub mod ovf;
pub mod vmdk;
