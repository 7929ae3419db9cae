//! Helpers shared by the end-to-end tests: locating built binaries and external tools.
#![forbid(unsafe_code)]
