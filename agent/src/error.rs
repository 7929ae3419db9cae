//! The one error-chain formatter: how every error of the agent becomes one line.
//!
//! Errors below carry their cause in `source()` and never repeat it in their own message
//! (STYLE.md, habit 2); the printer walks the chain once, here.

use std::error::Error;

/// Renders an error with its causes, `a: b: c`. A cause whose text the line already ends
/// with is not repeated (an error that formats its source into its own message, as some
/// third-party errors do, would otherwise print it twice).
pub fn chain(e: &dyn Error) -> String {
    chain_with(e, |_, link| link.to_string())
}

/// [`chain`], with each link's text given by `text(depth, link)` (depth 0 is `e` itself): for
/// printers that shorten what a link repeats of its context, as `capstan ovf check` drops
/// the `line N:` prefix its diagnostics already show.
pub fn chain_with(e: &dyn Error, text: impl Fn(usize, &dyn Error) -> String) -> String {
    let mut s = text(0, e);
    let mut cur = e.source();
    let mut depth = 1;
    while let Some(c) = cur {
        let t = text(depth, c);
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
        depth += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("reading {0}")]
    struct Outer(&'static str, #[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("permission denied")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("repeats: {0}")]
    struct Repeats(#[source] Inner);

    #[test]
    fn walks_the_chain_once() {
        assert_eq!(
            crate::error::chain(&Outer("/etc/x", Inner)),
            "reading /etc/x: permission denied"
        );
        assert_eq!(crate::error::chain(&Inner), "permission denied");
        // a message that already ends with its cause does not get it twice
        assert_eq!(crate::error::chain(&Repeats(Inner)), "repeats: permission denied");
    }

    #[test]
    fn chain_with_maps_each_link_by_depth() {
        let s = crate::error::chain_with(&Outer("/etc/x", Inner), |d, e| format!("{d}={e}"));
        assert_eq!(s, "0=reading /etc/x: 1=permission denied");
    }
}
