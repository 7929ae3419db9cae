//! Leaf value types for everything the agent is told from outside.
//!
//! Each type is built only through [`FromStr`] (or `TryFrom<String>`), so a value that exists is a
//! valid one: "parse, don't validate". Serde deserializes through the same parser, so a bad value
//! in a TOML, YAML or JSON document fails at the boundary with a [`ValueError`] naming what was
//! wrong. Display gives the canonical form (e.g. MAC addresses in lowercase).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A leaf value that failed to parse: which kind of value, the offending text (shortened), and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
#[non_exhaustive]
pub struct ValueError {
    /// What was being parsed (`"hostname"`, `"MAC address"`, ...).
    pub kind: &'static str,
    /// The input, cut to 80 characters so a hostile value cannot flood a log line.
    pub value: String,
    /// What was wrong with it.
    pub reason: String,
}

impl ValueError {
    /// A refusal of `value` (shortened) as a `kind`, for `reason`.
    pub(crate) fn new(kind: &'static str, value: &str, reason: impl Into<String>) -> Self {
        let value = if value.chars().count() > 80 {
            let mut v: String = value.chars().take(80).collect();
            v.push('…');
            v
        } else {
            value.to_owned()
        };
        ValueError { kind, value, reason: reason.into() }
    }
}

/// Implements Display/Serialize/Deserialize/TryFrom<String> for a type whose canonical text form
/// is its `Display` and whose parser is its `FromStr`.
macro_rules! text_value {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl TryFrom<String> for $t {
            type Error = ValueError;
            fn try_from(s: String) -> Result<Self, ValueError> {
                s.parse()
            }
        }
        impl TryFrom<&str> for $t {
            type Error = ValueError;
            fn try_from(s: &str) -> Result<Self, ValueError> {
                s.parse()
            }
        }
    };
}

/// [`text_value!`] for a newtype over its canonical `String`: also `Display` (the text itself)
/// and `as_str`.
macro_rules! string_value {
    ($($t:ty),+) => {$(
        impl $t {
            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        text_value!($t);
    )+};
}

/// A number or a text in a document: YAML, JSON and TOML authors write ports and modes either way.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    N(u64),
    S(String),
}

/// Deserializes a value written as a number (converted by `from_num`) or as text (its `FromStr`).
fn number_or_text<'de, D, T>(
    d: D,
    from_num: impl FnOnce(u64) -> Result<T, ValueError>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = ValueError>,
{
    match NumOrText::deserialize(d)? {
        NumOrText::N(n) => from_num(n),
        NumOrText::S(s) => s.parse(),
    }
    .map_err(serde::de::Error::custom)
}

/// The checks for a name the kernel or a directory entry takes as is: not empty, at most
/// `max_len` bytes (`too_long` is the message), not `.` or `..`, and no character `refused`
/// (the message adds `hint`).
fn check_name(
    kind: &'static str,
    s: &str,
    max_len: usize,
    too_long: &'static str,
    refused: impl Fn(char) -> bool,
    hint: &str,
) -> Result<(), ValueError> {
    if s.is_empty() {
        return Err(ValueError::new(kind, s, "empty"));
    }
    if s.len() > max_len {
        return Err(ValueError::new(kind, s, too_long));
    }
    if s == "." || s == ".." {
        return Err(ValueError::new(kind, s, "'.' and '..' are not allowed"));
    }
    if let Some(c) = s.chars().find(|c| refused(*c)) {
        return Err(ValueError::new(kind, s, format!("character {c:?} is not allowed{hint}")));
    }
    Ok(())
}

fn check_label(kind: &'static str, whole: &str, label: &str) -> Result<(), ValueError> {
    if label.is_empty() {
        return Err(ValueError::new(kind, whole, "empty label"));
    }
    if label.len() > 63 {
        return Err(ValueError::new(
            kind,
            whole,
            format!("label {label:?} is longer than 63 characters"),
        ));
    }
    if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
        return Err(ValueError::new(
            kind,
            whole,
            format!("character {c:?} is not allowed (letters, digits and '-' only)"),
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(ValueError::new(
            kind,
            whole,
            format!("label {label:?} starts or ends with '-'"),
        ));
    }
    Ok(())
}

fn check_dns_name(kind: &'static str, s: &str) -> Result<(), ValueError> {
    if s.is_empty() {
        return Err(ValueError::new(kind, s, "empty"));
    }
    if s.len() > 253 {
        return Err(ValueError::new(kind, s, "longer than 253 characters"));
    }
    for label in s.split('.') {
        check_label(kind, s, label)?;
    }
    Ok(())
}

/// A host name after RFC 1123: one or more dot-separated labels of letters, digits and `-`
/// (not at either end), at most 63 characters per label and 253 in all.
///
/// cloud-init's `local-hostname` may be a fully qualified name; [`Hostname::short`] gives the
/// first label, which is what goes to the kernel and `/etc/hostname`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);

impl Hostname {
    /// The first label (`node-1` for `node-1.example.com`).
    pub fn short(&self) -> &str {
        self.0.split('.').next().unwrap_or(&self.0)
    }
    /// The name as an [`Fqdn`] when it has at least two labels.
    pub fn as_fqdn(&self) -> Option<Fqdn> {
        self.0.contains('.').then(|| Fqdn(self.0.clone()))
    }
}

impl FromStr for Hostname {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        check_dns_name("hostname", s)?;
        Ok(Hostname(s.to_owned()))
    }
}

string_value!(Hostname);

/// A fully qualified domain name: a [`Hostname`] with at least two labels. One trailing dot
/// (the DNS root) is accepted and dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fqdn(String);

impl Fqdn {
    /// The host part (first label).
    pub fn host(&self) -> &str {
        self.0.split('.').next().unwrap_or(&self.0)
    }
    /// The domain part (everything after the first label).
    pub fn domain(&self) -> &str {
        self.0.split_once('.').map(|(_, d)| d).unwrap_or("")
    }
}

impl FromStr for Fqdn {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let t = s.strip_suffix('.').unwrap_or(s);
        check_dns_name("FQDN", t)?;
        if !t.contains('.') {
            return Err(ValueError::new("FQDN", s, "needs at least two labels (host.domain)"));
        }
        Ok(Fqdn(t.to_owned()))
    }
}

string_value!(Fqdn);

/// A DNS search domain (same syntax as a [`Hostname`], one label allowed).
pub type DomainName = Hostname;

/// An Ethernet MAC address. Accepts `:` or `-` separators in any case; displays lowercase with
/// `:` (the form networkd and `ip link` print).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let sep = if s.contains('-') { '-' } else { ':' };
        let parts: Vec<&str> = s.split(sep).collect();
        if parts.len() != 6 {
            return Err(ValueError::new(
                "MAC address",
                s,
                "expected six hex octets separated by ':'",
            ));
        }
        let mut out = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ValueError::new(
                    "MAC address",
                    s,
                    format!("octet {} ({p:?}) is not two hex digits", i + 1),
                ));
            }
            out[i] = u8::from_str_radix(p, 16)
                .map_err(|_| ValueError::new("MAC address", s, "bad hex"))?;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3], o[4], o[5])
    }
}
text_value!(MacAddr);

/// An interface address with its prefix length, e.g. `10.0.0.5/24` or `2001:db8::5/64`.
/// The host bits are kept (this is an address on a link, not only a network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpCidr {
    addr: IpAddr,
    prefix: u8,
}

impl IpCidr {
    /// Builds one from parts, checking the prefix against the address family.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, ValueError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(ValueError::new(
                "CIDR",
                &format!("{addr}/{prefix}"),
                format!("prefix length {prefix} is larger than {max}"),
            ));
        }
        Ok(IpCidr { addr, prefix })
    }
    /// Parses `addr/prefix`, or a bare address taken as a host route (/32 or /128).
    pub fn parse_or_host(s: &str) -> Result<Self, ValueError> {
        if s.contains('/') {
            s.parse()
        } else {
            let addr: IpAddr =
                s.parse().map_err(|_| ValueError::new("CIDR", s, "not an IPv4 or IPv6 address"))?;
            Ok(IpCidr { addr, prefix: if addr.is_ipv4() { 32 } else { 128 } })
        }
    }
    /// The address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    /// True for an IPv4 address.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
    /// The network this address is in (host bits cleared).
    pub fn network(&self) -> IpCidr {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask =
                    if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask =
                    if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                IpAddr::V6((bits & mask).into())
            }
        };
        IpCidr { addr, prefix: self.prefix }
    }
    /// True when `ip` is inside this address's network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        IpCidr { addr: ip, prefix: self.prefix }.network() == self.network()
    }
}

impl FromStr for IpCidr {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let (a, p) =
            s.split_once('/').ok_or_else(|| ValueError::new("CIDR", s, "missing '/prefix'"))?;
        let addr: IpAddr = a.parse().map_err(|_| {
            ValueError::new("CIDR", s, format!("{a:?} is not an IPv4 or IPv6 address"))
        })?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValueError::new("CIDR", s, format!("prefix length {p:?} is not a number")));
        }
        let prefix: u8 =
            p.parse().map_err(|_| ValueError::new("CIDR", s, "prefix length out of range"))?;
        IpCidr::new(addr, prefix).map_err(|e| ValueError { value: s.to_owned(), ..e })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
text_value!(IpCidr);

/// The identity of a VM instance (cloud-init's `instance-id`). A new one means a new clone.
///
/// It names a directory under `/var/lib/capstan/instances/`, so it is 1–255 printable ASCII
/// characters with no `/`, no whitespace, and not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(String);

impl FromStr for InstanceId {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        check_name(
            "instance-id",
            s,
            255,
            "longer than 255 characters",
            |c| !c.is_ascii_graphic() || c == '/',
            " (printable ASCII without '/' or spaces)",
        )?;
        Ok(InstanceId(s.to_owned()))
    }
}

string_value!(InstanceId);

/// A TCP/UDP port, 1–65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(u16);

impl Port {
    /// The port number.
    pub fn get(&self) -> u16 {
        self.0
    }
}

impl TryFrom<u16> for Port {
    type Error = ValueError;
    fn try_from(p: u16) -> Result<Self, ValueError> {
        if p == 0 {
            return Err(ValueError::new("port", "0", "must be 1-65535"));
        }
        Ok(Port(p))
    }
}

impl FromStr for Port {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let n: u16 =
            s.parse().map_err(|_| ValueError::new("port", s, "not a number in 1-65535"))?;
        Port::try_from(n).map_err(|e| ValueError { value: s.to_owned(), ..e })
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, |n| {
            u16::try_from(n)
                .map_err(|_| ValueError::new("port", &n.to_string(), "not a number in 1-65535"))
                .and_then(Port::try_from)
        })
    }
}

/// A Linux network interface name: 1–15 bytes, no `/`, `:` or whitespace, not `.` or `..`
/// (the kernel's `dev_valid_name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NicName(String);

impl FromStr for NicName {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        check_name(
            "interface name",
            s,
            15,
            "longer than 15 bytes",
            |c| !c.is_ascii_graphic() || c == '/' || c == ':',
            "",
        )?;
        Ok(NicName(s.to_owned()))
    }
}

string_value!(NicName);

/// What a duration setting accepts: the unit of a bare number and the allowed range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRule {
    /// What a number without a suffix counts (one second, one millisecond).
    pub bare_unit: Duration,
    /// The shortest accepted duration.
    pub min: Duration,
    /// The longest accepted duration.
    pub max: Duration,
}

/// Why a duration was refused; the text is cut to 40 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Not a whole number with an optional `ms`, `s`, `m` or `h` suffix.
    #[error("{text:?} is not a duration (a whole number with ms, s, m or h, like 500ms, 10s, 5m or 1h; a bare number counts {bare})")]
    Syntax {
        /// The input.
        text: String,
        /// The unit of a bare number (`1s`, `1ms`).
        bare: String,
    },
    /// A duration outside the rule's range.
    #[error("{text:?} is outside {min}..{max}")]
    Range {
        /// The input.
        text: String,
        /// The shortest accepted (`100ms`).
        min: String,
        /// The longest accepted (`60s`).
        max: String,
    },
}

/// Parses `500ms`, `10s`, `5m`, `1h` or a bare whole number (counted in `rule.bare_unit`),
/// surrounding whitespace ignored, into a duration within `rule`'s range.
pub fn parse_duration(s: &str, rule: &DurationRule) -> Result<Duration, DurationError> {
    let t = s.trim();
    let text = || t.chars().take(40).collect::<String>();
    let unit_ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (num, mult_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (t, unit_ms(rule.bare_unit))
    };
    let n: u64 = num.trim().parse().map_err(|_| DurationError::Syntax {
        text: text(),
        bare: format_duration(rule.bare_unit),
    })?;
    let range = || DurationError::Range {
        text: text(),
        min: format_duration(rule.min),
        max: format_duration(rule.max),
    };
    let d = n.checked_mul(mult_ms).map(Duration::from_millis).ok_or_else(range)?;
    if d < rule.min || d > rule.max {
        return Err(range());
    }
    Ok(d)
}

/// A duration in the largest unit that shows it whole: `100ms`, `60s`, `5m`, `24h`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 && ms >= 3_600_000 => format!("{}m", ms / 60_000),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// Unix permission bits, at most `0o7777`.
///
/// Parsed from an octal string (`"0644"`, `"644"`, `"0o644"`), as cloud-init's `permissions`.
/// An unquoted YAML integer such as `0644` reaches us as the decimal 644 (YAML 1.2 has no
/// leading-zero octal), so an integer is read by its decimal digits as octal, matching what the
/// author meant and what cloud-init's YAML 1.1 reader does with `0644`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnixMode(u32);

impl UnixMode {
    /// Builds one from bits.
    pub fn new(bits: u32) -> Result<Self, ValueError> {
        if bits > 0o7777 {
            return Err(ValueError::new("permissions", &format!("{bits:o}"), "larger than 07777"));
        }
        Ok(UnixMode(bits))
    }
    /// The permission bits.
    pub fn bits(&self) -> u32 {
        self.0
    }
}

impl FromStr for UnixMode {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let t = s.trim();
        let digits = t.strip_prefix("0o").or_else(|| t.strip_prefix("0O")).unwrap_or(t);
        if digits.is_empty()
            || digits.len() > 6
            || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return Err(ValueError::new("permissions", s, "not an octal mode like \"0644\""));
        }
        let bits = u32::from_str_radix(digits, 8)
            .map_err(|_| ValueError::new("permissions", s, "not octal"))?;
        UnixMode::new(bits).map_err(|e| ValueError { value: s.to_owned(), ..e })
    }
}

impl fmt::Display for UnixMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for UnixMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UnixMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // an integer's decimal digits are read as octal (see the type's docs)
        number_or_text(d, |n| n.to_string().parse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert_eq!("node-1".parse::<Hostname>().unwrap().short(), "node-1");
        assert_eq!("node-1.example.com".parse::<Hostname>().unwrap().short(), "node-1");
        for bad in ["", "-a", "a-", "a_b", "a..b", "a b", &"x".repeat(64), &["abc"; 70].join(".")] {
            assert!(bad.parse::<Hostname>().is_err(), "{bad:?} accepted");
        }
        let e = "bad_name".parse::<Hostname>().unwrap_err().to_string();
        assert!(e.contains("hostname") && e.contains("'_'"), "{e}");
        let f: Fqdn = "a.b.c.".parse().unwrap();
        assert_eq!((f.host(), f.domain(), f.as_str()), ("a", "b.c", "a.b.c"));
        assert!("single".parse::<Fqdn>().is_err());
    }

    #[test]
    fn macs() {
        let m: MacAddr = "00:50:56:AB:cd:0E".parse().unwrap();
        assert_eq!(m.to_string(), "00:50:56:ab:cd:0e");
        assert_eq!("00-50-56-ab-cd-0e".parse::<MacAddr>().unwrap(), m);
        for bad in
            ["", "00:50:56:ab:cd", "00:50:56:ab:cd:0g", "0:50:56:ab:cd:0e", "00:50:56:ab:cd:0e:11"]
        {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cidrs() {
        let c: IpCidr = "10.0.0.5/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "10.0.0.0/24");
        assert!(c.contains("10.0.0.1".parse().unwrap()));
        assert!(!c.contains("10.0.1.1".parse().unwrap()));
        assert_eq!(
            "2001:db8::5/64".parse::<IpCidr>().unwrap().network().to_string(),
            "2001:db8::/64"
        );
        let e = "10.0.0.300/24".parse::<IpCidr>().unwrap_err().to_string();
        assert!(e.contains("10.0.0.300/24"), "{e}");
        for bad in [
            "10.0.0.5",
            "10.0.0.5/33",
            "::1/129",
            "10.0.0.5/",
            "10.0.0.5/-1",
            "x/24",
            "10.0.0.5/+8",
        ] {
            assert!(bad.parse::<IpCidr>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(IpCidr::parse_or_host("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
    }

    #[test]
    fn instance_ids_and_nics() {
        assert!("iid-vsphere-0001".parse::<InstanceId>().is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(256)] {
            assert!(bad.parse::<InstanceId>().is_err(), "{bad:?} accepted");
        }
        assert!("eth0".parse::<NicName>().is_ok());
        for bad in ["", "a/b", "eth0:1", "abcdefghijklmnop", "..", "e 0"] {
            assert!(bad.parse::<NicName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations() {
        let secs = DurationRule {
            bare_unit: Duration::from_secs(1),
            min: Duration::from_millis(100),
            max: Duration::from_secs(86_400),
        };
        let millis = DurationRule {
            bare_unit: Duration::from_millis(1),
            min: Duration::from_millis(100),
            max: Duration::from_secs(60),
        };
        for (s, rule, want) in [
            ("10", &secs, Duration::from_secs(10)),
            (" 500ms ", &secs, Duration::from_millis(500)),
            ("5m", &secs, Duration::from_secs(300)),
            ("24h", &secs, Duration::from_secs(86_400)),
            ("500", &millis, Duration::from_millis(500)),
            ("2s", &millis, Duration::from_secs(2)),
            ("1m", &millis, Duration::from_secs(60)),
        ] {
            assert_eq!(parse_duration(s, rule), Ok(want), "{s:?}");
        }
        assert_eq!(
            parse_duration("10ms", &millis).unwrap_err().to_string(),
            r#""10ms" is outside 100ms..60s"#
        );
        assert_eq!(
            parse_duration("25h", &secs).unwrap_err().to_string(),
            r#""25h" is outside 100ms..24h"#
        );
        assert_eq!(
            parse_duration("2 weeks", &secs).unwrap_err().to_string(),
            r#""2 weeks" is not a duration (a whole number with ms, s, m or h, like 500ms, 10s, 5m or 1h; a bare number counts 1s)"#
        );
        for bad in ["", "-1s", "1.5s", "s", "99999999999999999999h", "1d", "0x10"] {
            assert!(parse_duration(bad, &secs).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_duration("18446744073709551615h", &secs).unwrap_err(),
            DurationError::Range {
                text: "18446744073709551615h".into(),
                min: "100ms".into(),
                max: "24h".into()
            },
            "overflow is out of range, not a panic"
        );
        let long = "9".repeat(100);
        assert!(!parse_duration(&long, &secs).unwrap_err().to_string().contains(&"9".repeat(41)));
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
    }

    #[test]
    fn modes_and_ports() {
        assert_eq!("0644".parse::<UnixMode>().unwrap().bits(), 0o644);
        assert_eq!("0o600".parse::<UnixMode>().unwrap().bits(), 0o600);
        assert_eq!("4755".parse::<UnixMode>().unwrap().to_string(), "4755");
        for bad in ["", "0x1ff", "0989", "17777", "rw-r--r--"] {
            assert!(bad.parse::<UnixMode>().is_err(), "{bad:?} accepted");
        }
        let m: UnixMode = serde_yaml::from_str("0644").unwrap();
        assert_eq!(m.bits(), 0o644);
        let m: UnixMode = serde_yaml::from_str("'0600'").unwrap();
        assert_eq!(m.bits(), 0o600);
        assert!(serde_yaml::from_str::<UnixMode>("999").is_err());
        assert!("0".parse::<Port>().is_err());
        assert_eq!(serde_json::from_str::<Port>("6443").unwrap().get(), 6443);
        assert!(serde_json::from_str::<Port>("70000").is_err());
    }

    /// The messages the shared helpers produce, pinned: sources and keys are prefixed by the
    /// callers, the reason text is this module's.
    #[test]
    fn name_and_number_messages() {
        let msg = |r: Result<InstanceId, ValueError>| r.unwrap_err().to_string();
        assert_eq!(msg("".parse()), r#"invalid instance-id "": empty"#);
        assert!(msg("x".repeat(256).parse()).ends_with(": longer than 255 characters"));
        assert_eq!(msg("..".parse()), r#"invalid instance-id "..": '.' and '..' are not allowed"#);
        assert_eq!(
            msg("a/b".parse()),
            r#"invalid instance-id "a/b": character '/' is not allowed (printable ASCII without '/' or spaces)"#
        );
        let msg = |r: Result<NicName, ValueError>| r.unwrap_err().to_string();
        assert_eq!(msg("".parse()), r#"invalid interface name "": empty"#);
        assert_eq!(
            msg("abcdefghijklmnop".parse()),
            r#"invalid interface name "abcdefghijklmnop": longer than 15 bytes"#
        );
        assert_eq!(msg(".".parse()), r#"invalid interface name ".": '.' and '..' are not allowed"#);
        assert_eq!(
            msg("eth0:1".parse()),
            r#"invalid interface name "eth0:1": character ':' is not allowed"#
        );
        for (json, want) in [
            ("0", r#"invalid port "0": must be 1-65535"#),
            ("70000", r#"invalid port "70000": not a number in 1-65535"#),
            (r#""x""#, r#"invalid port "x": not a number in 1-65535"#),
        ] {
            assert_eq!(serde_json::from_str::<Port>(json).unwrap_err().to_string(), want);
        }
        assert_eq!(serde_json::from_str::<Port>(r#""443""#).unwrap().get(), 443);
        assert_eq!(serde_json::from_str::<UnixMode>("755").unwrap().bits(), 0o755);
        assert_eq!(
            serde_json::from_str::<UnixMode>("8").unwrap_err().to_string(),
            r#"invalid permissions "8": not an octal mode like "0644""#
        );
        // the string newtypes: Display, as_str and serde agree
        let n: NicName = serde_json::from_str(r#""ens192""#).unwrap();
        assert_eq!((n.as_str(), n.to_string()), ("ens192", "ens192".to_string()));
        assert_eq!(serde_json::to_string(&n).unwrap(), r#""ens192""#);
        let h: Hostname = "Node-1.example.com".parse().unwrap();
        assert_eq!(serde_json::to_string(&h).unwrap(), r#""Node-1.example.com""#);
        assert_eq!(h.as_fqdn().unwrap().as_str(), "Node-1.example.com");
        assert!(serde_json::from_str::<InstanceId>(r#""a b""#).is_err());
    }
}
