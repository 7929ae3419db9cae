//! `capstan ova inspect FILE.ova|FILE.ovf [--json]`.
