//! A small namespace-aware XML element tree, shared by the descriptor and the environment.
//!
//! OVF documents come from many writers (vCenter, ovftool, VirtualBox, vCloud Director, hand
//! edits) and carry sections this crate does not model. To make those survive a round trip, a
//! document is first read into this generic tree — every element keeps its namespace URI, its
//! original prefix, its attributes and its namespace declarations — and the typed model is built
//! on top of it, keeping what it does not understand as [`Element`]s.
//!
//! The reader is deliberately strict about what makes XML dangerous and lenient about what
//! real-world writers get wrong:
//! - a `DOCTYPE` (and with it any entity declaration) is rejected, so entity-expansion attacks
//!   cannot start; only the five predefined entities and character references are expanded;
//! - input size and nesting depth are capped;
//! - a prefix that is used but never declared is kept as written (no namespace) instead of
//!   failing the whole document.
//!
//! The writer re-declares namespaces where an element needs them, so any tree (parsed or built)
//! serializes to a document that reads back to the same tree.

use std::collections::HashSet;
use std::fmt::Write as _;

use quick_xml::events::{BytesEnd, BytesStart, Event};
use quick_xml::Reader;

/// The namespace bound to the `xml` prefix by definition.
pub const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
/// The `xmlns` namespace (declarations themselves).
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

/// A source line number (1-based; 0 when the node was built, not parsed).
///
/// It is provenance, not content: two `Line`s always compare equal, so that a parsed model
/// and the same model re-parsed from written output compare equal.
#[derive(Debug, Clone, Copy, Default, Eq)]
pub struct Line(pub u32);

impl PartialEq for Line {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An expanded XML name: namespace URI and local name, plus the prefix it was written with
/// (a writing preference only; equality ignores it when the namespace is known).
#[derive(Debug, Clone, Eq)]
pub struct Name {
    /// The namespace URI, `None` for no namespace (or an undeclared prefix).
    pub ns: Option<String>,
    /// The local part.
    pub local: String,
    /// The prefix it was (or should preferably be) written with.
    pub prefix: Option<String>,
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.ns == other.ns
            && self.local == other.local
            && (self.ns.is_some() || self.prefix == other.prefix)
    }
}

impl Name {
    /// A name in namespace `ns` with a preferred prefix.
    pub fn new(ns: &str, prefix: Option<&str>, local: &str) -> Self {
        Name {
            ns: Some(ns.to_string()),
            local: local.to_string(),
            prefix: prefix.map(str::to_string),
        }
    }

    /// A name in no namespace.
    pub fn local(local: &str) -> Self {
        Name { ns: None, local: local.to_string(), prefix: None }
    }

    /// `true` when this is `local` in namespace `ns`.
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.local == local && self.ns.as_deref() == Some(ns)
    }

    /// The name as written: `prefix:local` or `local`.
    pub fn qualified(&self) -> String {
        match &self.prefix {
            Some(p) => format!("{p}:{}", self.local),
            None => self.local.clone(),
        }
    }
}

/// An attribute (namespace declarations are kept apart, in [`Element::ns_decls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// The attribute's expanded name.
    pub name: Name,
    /// The unescaped value.
    pub value: String,
}

/// A child of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data (whitespace-only runs between elements are dropped when reading).
    Text(String),
}

/// An XML element with everything needed to write it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The element's expanded name.
    pub name: Name,
    /// Attributes in document order, without namespace declarations.
    pub attrs: Vec<Attr>,
    /// Namespace declarations made on this element (`None` prefix: the default namespace),
    /// written back as they were. Not part of equality: bindings, not spelling, carry meaning.
    pub ns_decls: NsDecls,
    /// Child elements and text.
    pub children: Vec<Node>,
    /// Where the start tag was.
    pub line: Line,
}

/// Namespace declarations of one element; always compare equal (see [`Element::ns_decls`]).
#[derive(Debug, Clone, Default, Eq)]
pub struct NsDecls(pub Vec<(Option<String>, String)>);

impl PartialEq for NsDecls {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Element {
    /// An empty element named `name`.
    pub fn new(name: Name) -> Self {
        Element {
            name,
            attrs: Vec::new(),
            ns_decls: NsDecls::default(),
            children: Vec::new(),
            line: Line(0),
        }
    }

    /// Builder-style: adds an attribute.
    pub fn with_attr(mut self, name: Name, value: impl Into<String>) -> Self {
        self.attrs.push(Attr { name, value: value.into() });
        self
    }

    /// Builder-style: adds a text child.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    /// Builder-style: adds a child element.
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// The child elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The concatenated text content of this element (not of its descendants).
    pub fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }

    /// The value of the attribute `local` in namespace `ns` (`None`: no namespace).
    pub fn attr(&self, ns: Option<&str>, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.name.local == local && a.name.ns.as_deref() == ns)
            .map(|a| a.value.as_str())
    }
}

/// Why a document could not be read as XML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XmlError {
    /// The input is larger than the reader accepts.
    #[error("document is {size} bytes, more than the {limit}-byte limit")]
    TooLarge {
        /// Input size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The document declares a DOCTYPE (entity declarations live there).
    #[error("line {line}: DOCTYPE declarations are not allowed (entity expansion is refused)")]
    Doctype {
        /// Where.
        line: u32,
    },
    /// Elements nest deeper than the reader accepts.
    #[error("line {line}: elements nest deeper than {limit} levels")]
    TooDeep {
        /// Where.
        line: u32,
        /// The limit.
        limit: usize,
    },
    /// The XML is not well-formed.
    #[error("line {line}: {message}")]
    Syntax {
        /// Where.
        line: u32,
        /// What the tokenizer said.
        message: String,
    },
    /// The bytes are not text in an encoding we read.
    #[error("{0}")]
    Encoding(String),
}

impl XmlError {
    /// The line the error points at (0 when it concerns the whole input).
    pub fn line(&self) -> u32 {
        match self {
            XmlError::Doctype { line }
            | XmlError::TooDeep { line, .. }
            | XmlError::Syntax { line, .. } => *line,
            XmlError::TooLarge { .. } | XmlError::Encoding(_) => 0,
        }
    }
}

/// Maximum element nesting accepted by [`parse`].
pub const MAX_DEPTH: usize = 256;

/// Turns raw bytes into text: UTF-8 (BOM optional) or UTF-16 with a BOM.
pub fn decode(bytes: &[u8]) -> Result<String, XmlError> {
    if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        return String::from_utf8(rest.to_vec())
            .map_err(|e| XmlError::Encoding(format!("invalid UTF-8: {e}")));
    }
    let utf16 = |rest: &[u8], le: bool| -> Result<String, XmlError> {
        if rest.len() % 2 != 0 {
            return Err(XmlError::Encoding("UTF-16 input has an odd length".into()));
        }
        let units = rest.chunks_exact(2).map(|c| {
            if le {
                u16::from_le_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        });
        char::decode_utf16(units)
            .collect::<Result<String, _>>()
            .map_err(|e| XmlError::Encoding(format!("invalid UTF-16: {e}")))
    };
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        return utf16(rest, true);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        return utf16(rest, false);
    }
    String::from_utf8(bytes.to_vec()).map_err(|e| {
        XmlError::Encoding(format!(
            "not UTF-8 (byte offset {}); only UTF-8 and UTF-16 with a byte-order mark are read",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Maps byte offsets to 1-based line numbers.
struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    fn new(s: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(s.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i + 1));
        Lines { starts }
    }

    fn line(&self, offset: usize) -> u32 {
        let idx = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        u32::try_from(idx + 1).unwrap_or(u32::MAX)
    }
}

/// One open element while reading, with its in-scope declarations.
struct Open {
    elem: Element,
    raw_name: String,
    text: String,
    /// Number of bindings this element pushed onto the scope stack.
    pushed: usize,
}

/// Parses a whole document into its root element.
///
/// `limit` caps the input size in bytes. A leading byte-order mark is skipped.
pub fn parse(input: &str, limit: usize) -> Result<Element, XmlError> {
    if input.len() > limit {
        return Err(XmlError::TooLarge { size: input.len(), limit });
    }
    let input = input.strip_prefix('\u{feff}').unwrap_or(input);
    let lines = Lines::new(input);
    let mut reader = Reader::from_str(input);
    reader.config_mut().check_end_names = true;
    reader.config_mut().check_comments = false;
    let mut tree =
        Tree { scope: vec![(Some("xml".into()), XML_NS.into())], stack: Vec::new(), root: None };
    loop {
        let pos = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let line = lines.line(pos.min(input.len()));
        let event = reader.read_event().map_err(|e| {
            let at = usize::try_from(reader.error_position()).unwrap_or(usize::MAX);
            XmlError::Syntax { line: lines.line(at.min(input.len())), message: e.to_string() }
        })?;
        match event {
            Event::Start(_) | Event::Empty(_) if tree.root.is_some() => {
                return Err(XmlError::Syntax {
                    line,
                    message: "content after the root element".into(),
                });
            }
            Event::Start(start) => tree.start(&start, line)?,
            Event::Empty(start) => tree.empty(&start, line)?,
            Event::End(end) => tree.end(&end, line)?,
            Event::Text(t) => {
                let raw = std::str::from_utf8(&t)
                    .map_err(|e| XmlError::Syntax { line, message: e.to_string() })?;
                let text = t.unescape().map_err(|e| escape_error(&e, &lines, pos, line))?;
                tree.text(raw, &text, line)?;
            }
            Event::CData(c) => {
                let text = std::str::from_utf8(&c)
                    .map_err(|e| XmlError::Syntax { line, message: e.to_string() })?;
                tree.cdata(text, line)?;
            }
            Event::DocType(_) => return Err(XmlError::Doctype { line }),
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) => {}
            Event::Eof => break,
        }
    }
    tree.finish(lines.line(input.len()))
}

/// The document being built: namespace scope, open elements, and the root once closed.
struct Tree {
    /// (prefix, uri): prefix None is the default namespace; uri "" undeclares it.
    scope: Vec<(Option<String>, String)>,
    stack: Vec<Open>,
    root: Option<Element>,
}

impl Tree {
    fn open(&mut self, start: &BytesStart, line: u32) -> Result<Open, XmlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(XmlError::TooDeep { line, limit: MAX_DEPTH });
        }
        open_element(start, line, &mut self.scope)
    }

    fn start(&mut self, start: &BytesStart, line: u32) -> Result<(), XmlError> {
        let open = self.open(start, line)?;
        if let Some(parent) = self.stack.last_mut() {
            flush_text(parent);
        }
        self.stack.push(open);
        Ok(())
    }

    fn empty(&mut self, start: &BytesStart, line: u32) -> Result<(), XmlError> {
        let open = self.open(start, line)?;
        self.scope.truncate(self.scope.len() - open.pushed);
        match self.stack.last_mut() {
            Some(parent) => {
                flush_text(parent);
                parent.elem.children.push(Node::Element(open.elem));
            }
            None => self.root = Some(open.elem),
        }
        Ok(())
    }

    fn end(&mut self, end: &BytesEnd, line: u32) -> Result<(), XmlError> {
        let Some(mut open) = self.stack.pop() else {
            return Err(XmlError::Syntax {
                line,
                message: format!(
                    "unexpected end tag </{}>",
                    String::from_utf8_lossy(end.name().as_ref())
                ),
            });
        };
        flush_text(&mut open);
        self.scope.truncate(self.scope.len() - open.pushed);
        match self.stack.last_mut() {
            Some(parent) => parent.elem.children.push(Node::Element(open.elem)),
            None => self.root = Some(open.elem),
        }
        Ok(())
    }

    /// Text (`raw` as written, `text` unescaped); outside the root only whitespace.
    fn text(&mut self, raw: &str, text: &str, line: u32) -> Result<(), XmlError> {
        match self.stack.last_mut() {
            Some(open) => open.text.push_str(text),
            None if !raw.trim().is_empty() => {
                return Err(XmlError::Syntax {
                    line,
                    message: if self.root.is_some() {
                        "text after the root element".into()
                    } else {
                        "text before the root element".into()
                    },
                });
            }
            None => {}
        }
        Ok(())
    }

    fn cdata(&mut self, text: &str, line: u32) -> Result<(), XmlError> {
        match self.stack.last_mut() {
            Some(open) => {
                open.text.push_str(text);
                Ok(())
            }
            None => {
                Err(XmlError::Syntax { line, message: "CDATA outside the root element".into() })
            }
        }
    }

    /// The root, once the input ended outside every element; `end_line` is the last line.
    fn finish(self, end_line: u32) -> Result<Element, XmlError> {
        if let Some(open) = self.stack.last() {
            return Err(XmlError::Syntax {
                line: end_line,
                message: format!(
                    "document ends inside <{}> (opened on line {})",
                    open.raw_name, open.elem.line
                ),
            });
        }
        self.root.ok_or(XmlError::Syntax { line: end_line, message: "no root element".into() })
    }
}

/// Describes an entity problem in text at its own line (a text run can span many lines).
fn escape_error(e: &quick_xml::Error, lines: &Lines, pos: usize, line: u32) -> XmlError {
    use quick_xml::escape::EscapeError;
    match e {
        quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(range, name)) => {
            XmlError::Syntax {
                line: lines.line(pos + range.start),
                message: format!(
                    "unknown entity &{name}; (only the predefined XML entities and character \
                     references are allowed)"
                ),
            }
        }
        quick_xml::Error::Escape(EscapeError::UnterminatedEntity(range)) => XmlError::Syntax {
            line: lines.line(pos + range.start),
            message: "'&' not followed by an entity or character reference and ';'".into(),
        },
        other => XmlError::Syntax { line, message: other.to_string() },
    }
}

/// Moves accumulated text into the element as a text node (dropping whitespace-only runs).
fn flush_text(open: &mut Open) {
    if !open.text.trim().is_empty() {
        open.elem.children.push(Node::Text(std::mem::take(&mut open.text)));
    } else {
        open.text.clear();
    }
}

fn lookup<'a>(scope: &'a [(Option<String>, String)], prefix: Option<&str>) -> Option<&'a str> {
    scope
        .iter()
        .rev()
        .find(|(p, _)| p.as_deref() == prefix)
        .map(|(_, u)| u.as_str())
        .filter(|u| !u.is_empty())
}

/// A QName per XML Namespaces: `local` or `prefix:local`, no other colon.
fn qname_ok(q: &str) -> bool {
    match q.split_once(':') {
        None => !q.is_empty(),
        Some((p, l)) => !p.is_empty() && !l.is_empty() && !l.contains(':'),
    }
}

fn split_qname(q: &str) -> (Option<&str>, &str) {
    match q.split_once(':') {
        Some((p, l)) if !p.is_empty() && !l.is_empty() => (Some(p), l),
        _ => (None, q),
    }
}

fn open_element(
    start: &BytesStart<'_>,
    line: u32,
    scope: &mut Vec<(Option<String>, String)>,
) -> Result<Open, XmlError> {
    let syntax = |message: String| XmlError::Syntax { line, message };
    let raw_name =
        std::str::from_utf8(start.name().as_ref()).map_err(|e| syntax(e.to_string()))?.to_string();
    if !qname_ok(&raw_name) {
        return Err(syntax(format!("element name {raw_name:?} is not a QName")));
    }
    let mut decls = Vec::new();
    let mut raw_attrs = Vec::new();
    for attr in start.attributes().with_checks(true) {
        let attr = attr.map_err(|e| syntax(format!("in <{raw_name}>: {e}")))?;
        let key =
            std::str::from_utf8(attr.key.as_ref()).map_err(|e| syntax(e.to_string()))?.to_string();
        let value = attr
            .unescape_value()
            .map_err(|e| syntax(format!("in <{raw_name}> attribute {key}: {e}")))?
            .into_owned();
        if !qname_ok(&key) {
            return Err(syntax(format!("in <{raw_name}>: attribute name {key:?} is not a QName")));
        }
        if key == "xmlns" {
            decls.push((None, value));
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            // XML Namespaces 1.0: `xml` is fixed, `xmlns` reserved, prefixes cannot be undeclared.
            let reserved = (p == "xml" && value != XML_NS) || p == "xmlns" || value == XMLNS_NS;
            if reserved || value.is_empty() {
                return Err(syntax(format!(
                    "in <{raw_name}>: {key}={value:?} is not an allowed namespace declaration"
                )));
            }
            decls.push((Some(p.to_string()), value));
        } else {
            raw_attrs.push((key, value));
        }
    }
    let pushed = decls.len();
    scope.extend(decls.iter().cloned());
    let (prefix, local) = split_qname(&raw_name);
    let name = Name {
        ns: lookup(scope, prefix).map(str::to_string),
        local: local.to_string(),
        prefix: prefix.map(str::to_string),
    };
    let mut attrs: Vec<Attr> = Vec::with_capacity(raw_attrs.len());
    for (key, value) in raw_attrs {
        let (prefix, local) = split_qname(&key);
        // Unprefixed attributes are in no namespace, whatever the default namespace is.
        let ns = prefix.and_then(|p| lookup(scope, Some(p)).map(str::to_string));
        let name = Name { ns, local: local.to_string(), prefix: prefix.map(str::to_string) };
        if attrs.iter().any(|a| a.name == name) {
            return Err(syntax(format!(
                "in <{raw_name}>: attribute {key} appears twice (after namespace resolution)"
            )));
        }
        attrs.push(Attr { name, value });
    }
    Ok(Open {
        elem: Element {
            name,
            attrs,
            ns_decls: NsDecls(decls),
            children: Vec::new(),
            line: Line(line),
        },
        raw_name,
        text: String::new(),
        pushed,
    })
}

/// Serializes `root` as a UTF-8 document with an XML declaration, indented by two spaces.
pub fn write_document(root: &Element) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let mut scope: Vec<(Option<String>, String)> = vec![(Some("xml".into()), XML_NS.into())];
    let reserved = unbound_prefixes(root);
    write_element(&mut out, root, &mut scope, &reserved, 0, true);
    out.push('\n');
    out
}

/// Serializes one element (and its subtree) without an XML declaration, for tests and debugging.
pub fn write_fragment(elem: &Element) -> String {
    let mut out = String::new();
    let mut scope: Vec<(Option<String>, String)> = vec![(Some("xml".into()), XML_NS.into())];
    let reserved = unbound_prefixes(elem);
    write_element(&mut out, elem, &mut scope, &reserved, 0, true);
    out
}

/// Prefixes used without a declaration (kept as written by the lenient reader). The writer
/// never declares them, so such a name cannot become bound on the way back in.
fn unbound_prefixes(e: &Element) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        let names = std::iter::once(&e.name).chain(e.attrs.iter().map(|a| &a.name));
        for n in names {
            if let (None, Some(p)) = (&n.ns, &n.prefix) {
                out.insert(p.clone());
            }
        }
        stack.extend(e.elements());
    }
    out
}

fn bound<'a>(scope: &'a [(Option<String>, String)], prefix: Option<&str>) -> Option<&'a str> {
    scope.iter().rev().find(|(p, _)| p.as_deref() == prefix).map(|(_, u)| u.as_str())
}

/// A prefix (not the default) currently bound to `uri` and not shadowed.
fn prefix_for<'a>(scope: &'a [(Option<String>, String)], uri: &str) -> Option<&'a str> {
    scope.iter().rev().find_map(|(p, u)| {
        let p = p.as_deref()?;
        (u == uri && bound(scope, Some(p)) == Some(uri)).then_some(p)
    })
}

/// Picks a prefix to declare for `uri`: the preferred one when free, else a fresh one.
fn fresh_prefix(
    scope: &[(Option<String>, String)],
    preferred: Option<&str>,
    reserved: &HashSet<String>,
) -> String {
    if let Some(p) = preferred {
        if p != "xml" && p != "xmlns" && bound(scope, Some(p)).is_none() && !reserved.contains(p) {
            return p.to_string();
        }
    }
    (0..)
        .map(|i| format!("ns{i}"))
        .find(|p| bound(scope, Some(p)).is_none() && !reserved.contains(p))
        .unwrap_or_else(|| "nsx".into())
}

/// The namespace scope while writing: (prefix, uri) bindings, innermost last.
type Scope = Vec<(Option<String>, String)>;

fn write_element(
    out: &mut String,
    elem: &Element,
    scope: &mut Scope,
    reserved: &HashSet<String>,
    depth: usize,
    pretty: bool,
) {
    let mark = scope.len();
    let mut decls: Scope = Vec::new();
    for (p, u) in &elem.ns_decls.0 {
        if p.as_deref() == Some("xml") {
            continue;
        }
        if !decls.iter().any(|(q, _)| q == p) {
            declare(scope, &mut decls, p.clone(), u);
        }
    }
    let qname = element_qname(&elem.name, scope, &mut decls, reserved);
    let attrs = attribute_qnames(elem, scope, &mut decls, reserved);
    if pretty {
        indent(out, depth);
    }
    write_start_tag(out, &qname, &decls, &attrs);
    if elem.children.is_empty() {
        out.push_str("/>");
    } else {
        out.push('>');
        let has_text = elem.children.iter().any(|n| matches!(n, Node::Text(_)));
        let child_pretty = pretty && !has_text;
        for child in &elem.children {
            match child {
                Node::Text(t) => escape_text(out, t),
                Node::Element(e) => {
                    if child_pretty {
                        out.push('\n');
                    }
                    write_element(out, e, scope, reserved, depth + 1, child_pretty);
                }
            }
        }
        if child_pretty {
            out.push('\n');
            indent(out, depth);
        }
        out.push_str("</");
        out.push_str(&qname);
        out.push('>');
    }
    scope.truncate(mark);
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

/// Binds `prefix` to `uri` in scope and lists it among the element's declarations.
fn declare(scope: &mut Scope, decls: &mut Scope, prefix: Option<String>, uri: &str) {
    decls.push((prefix.clone(), uri.to_string()));
    scope.push((prefix, uri.to_string()));
}

/// The element's qualified name: its own prefix when bound to its namespace, else the default
/// namespace, another bound prefix, or a new declaration.
fn element_qname(
    name: &Name,
    scope: &mut Scope,
    decls: &mut Scope,
    reserved: &HashSet<String>,
) -> String {
    match &name.ns {
        Some(uri) => {
            let pref = name.prefix.as_deref();
            if pref.is_some() && bound(scope, pref) == Some(uri.as_str()) {
                name.qualified()
            } else if bound(scope, None) == Some(uri.as_str()) {
                name.local.clone()
            } else if let Some(p) = prefix_for(scope, uri) {
                format!("{p}:{}", name.local)
            } else if pref.is_none() {
                declare(scope, decls, None, uri);
                name.local.clone()
            } else {
                let p = fresh_prefix(scope, pref, reserved);
                declare(scope, decls, Some(p.clone()), uri);
                format!("{p}:{}", name.local)
            }
        }
        None => {
            if name.prefix.is_none() && bound(scope, None).is_some_and(|u| !u.is_empty()) {
                declare(scope, decls, None, "");
            }
            name.qualified()
        }
    }
}

/// The attributes' qualified names and values (namespace declarations are written from the
/// scope instead); a namespaced attribute needs a prefix, never the default namespace.
fn attribute_qnames<'e>(
    elem: &'e Element,
    scope: &mut Scope,
    decls: &mut Scope,
    reserved: &HashSet<String>,
) -> Vec<(String, &'e str)> {
    let mut attrs: Vec<(String, &str)> = Vec::with_capacity(elem.attrs.len());
    for a in &elem.attrs {
        let q = match &a.name.ns {
            None => a.name.qualified(),
            Some(uri) if uri == XML_NS => format!("xml:{}", a.name.local),
            Some(uri) if uri == XMLNS_NS => continue,
            Some(uri) => {
                let pref = a.name.prefix.as_deref();
                if pref.is_some() && bound(scope, pref) == Some(uri.as_str()) {
                    a.name.qualified()
                } else if let Some(p) = prefix_for(scope, uri) {
                    format!("{p}:{}", a.name.local)
                } else {
                    let p = fresh_prefix(scope, pref, reserved);
                    declare(scope, decls, Some(p.clone()), uri);
                    format!("{p}:{}", a.name.local)
                }
            }
        };
        attrs.push((q, a.value.as_str()));
    }
    attrs
}

/// `<qname` with the declarations and attributes (the caller closes the tag).
fn write_start_tag(out: &mut String, qname: &str, decls: &Scope, attrs: &[(String, &str)]) {
    out.push('<');
    out.push_str(qname);
    for (p, u) in decls {
        match p {
            Some(p) => {
                let _ = write!(out, " xmlns:{p}=\"");
            }
            None => out.push_str(" xmlns=\""),
        }
        escape_attr(out, u);
        out.push('"');
    }
    for (q, v) in attrs {
        let _ = write!(out, " {q}=\"");
        escape_attr(out, v);
        out.push('"');
    }
}

fn escape_attr(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
}

fn escape_text(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    #[test]
    fn round_trips_namespaces_and_unknown_prefixes() {
        let doc = r#"<a xmlns="urn:a" xmlns:b="urn:b" b:x="1" y="2"><b:c>t &amp; u</b:c><d xmlns=""><e/></d><u:v/></a>"#;
        let root = parse(doc, LIMIT).unwrap();
        assert_eq!(root.name.ns.as_deref(), Some("urn:a"));
        let kids: Vec<_> = root.elements().collect();
        assert!(kids[0].name.is("urn:b", "c"));
        assert_eq!(kids[0].text(), "t & u");
        assert_eq!(kids[1].name.ns, None);
        assert_eq!(kids[1].elements().next().unwrap().name.ns, None);
        assert_eq!(kids[2].name.ns, None);
        assert_eq!(kids[2].name.prefix.as_deref(), Some("u"));
        let written = write_document(&root);
        let again = parse(&written, LIMIT).unwrap();
        assert_eq!(root, again, "{written}");
    }

    #[test]
    fn undeclared_prefixes_stay_unbound() {
        // `p:` is used undeclared; the writer must not bind `p` when it needs a prefix.
        let mut root = parse(r#"<a p:x="1"><p:b/></a>"#, LIMIT).unwrap();
        root.attrs.push(Attr { name: Name::new("urn:q", Some("p"), "y"), value: "2".into() });
        let s = write_document(&root);
        assert_eq!(parse(&s, LIMIT).unwrap(), root, "{s}");
    }

    #[test]
    fn writer_declares_missing_namespaces() {
        let e = Element::new(Name::new("urn:x", Some("x"), "top"))
            .with_attr(Name::new("urn:y", Some("y"), "a"), "v\"<&\n")
            .with_child(Element::new(Name::local("plain")))
            .with_child(Element::new(Name::new("urn:z", None, "z")));
        let s = write_document(&e);
        let back = parse(&s, LIMIT).unwrap();
        assert_eq!(e, back, "{s}");
    }

    #[test]
    fn rejects_doctype_and_entities() {
        let bomb = "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [<!ENTITY lol \"lol\">]>\n<a>&lol;</a>";
        let err = parse(bomb, LIMIT).unwrap_err();
        assert_eq!(err, XmlError::Doctype { line: 2 });
        let err = parse("<a>\n&lol;</a>", LIMIT).unwrap_err();
        assert!(matches!(err, XmlError::Syntax { line: 2, .. }), "{err:?}");
    }

    #[test]
    fn reports_lines_and_limits() {
        let err = parse("<a>\n<b>\n</a>", LIMIT).unwrap_err();
        assert_eq!(err.line(), 3, "{err}");
        let err = parse("<a>\n<b>", LIMIT).unwrap_err();
        assert!(err.to_string().contains("ends inside <b>"), "{err}");
        assert!(matches!(parse("<a/>", 2).unwrap_err(), XmlError::TooLarge { .. }));
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert!(matches!(parse(&deep, LIMIT).unwrap_err(), XmlError::TooDeep { .. }));
        assert!(parse("junk<a/>", LIMIT).is_err());
        assert!(parse("<a/><b/>", LIMIT).is_err());
        assert!(parse("", LIMIT).is_err());
        assert!(parse("<a x='1' x='2'/>", LIMIT).is_err());
        assert!(parse("<a xmlns:p:q='u'/>", LIMIT).is_err());
        assert!(parse("<a xmlns:xml='u'/>", LIMIT).is_err());
        assert!(parse("<a xmlns:p=''/>", LIMIT).is_err());
        assert!(parse("<a xmlns:xmlns='u'/>", LIMIT).is_err());
        assert!(parse("<a:b:c/>", LIMIT).is_err());
        assert!(parse("<a p:='1'/>", LIMIT).is_err());
    }

    #[test]
    fn decodes_boms() {
        assert_eq!(decode(b"\xEF\xBB\xBF<a/>").unwrap(), "<a/>");
        let le: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("<a/>".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(decode(&le).unwrap(), "<a/>");
        let be: Vec<u8> = [0xFE, 0xFF]
            .into_iter()
            .chain("<a/>".encode_utf16().flat_map(u16::to_be_bytes))
            .collect();
        assert_eq!(decode(&be).unwrap(), "<a/>");
        assert!(decode(b"\xFF\x00\x41").is_err());
    }
}
