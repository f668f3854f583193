//! Prometheus relabeling (`relabel_configs`, `metric_relabel_configs`).
//!
//! Semantics follow Prometheus's `model/relabel`: regexes are fully anchored
//! (`^(?s:regex)$`), `replacement` and `target_label` expand `$1`, `${1}`,
//! `$name`, `${name}` and `$$` exactly like Go's `Regexp.Expand` (so `$1x`
//! means the group *named* `1x`, which does not exist and expands to ""),
//! and `hashmod` uses the low 8 bytes of the MD5 of the joined source values.

use super::config::is_valid_label_name;
use regex::{Captures, Regex};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;

/// The label set relabeling works on: name -> value; an empty value is
/// "absent" (setting a label to "" removes it).
pub type LabelMap = BTreeMap<String, String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RelabelAction {
    #[default]
    Replace,
    Keep,
    Drop,
    KeepEqual,
    DropEqual,
    HashMod,
    LabelMap,
    LabelDrop,
    LabelKeep,
    Lowercase,
    Uppercase,
}

impl RelabelAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            RelabelAction::Replace => "replace",
            RelabelAction::Keep => "keep",
            RelabelAction::Drop => "drop",
            RelabelAction::KeepEqual => "keepequal",
            RelabelAction::DropEqual => "dropequal",
            RelabelAction::HashMod => "hashmod",
            RelabelAction::LabelMap => "labelmap",
            RelabelAction::LabelDrop => "labeldrop",
            RelabelAction::LabelKeep => "labelkeep",
            RelabelAction::Lowercase => "lowercase",
            RelabelAction::Uppercase => "uppercase",
        }
    }
}

impl<'de> Deserialize<'de> for RelabelAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // Prometheus accepts any case.
        Ok(match s.to_ascii_lowercase().as_str() {
            "replace" => RelabelAction::Replace,
            "keep" => RelabelAction::Keep,
            "drop" => RelabelAction::Drop,
            "keepequal" => RelabelAction::KeepEqual,
            "dropequal" => RelabelAction::DropEqual,
            "hashmod" => RelabelAction::HashMod,
            "labelmap" => RelabelAction::LabelMap,
            "labeldrop" => RelabelAction::LabelDrop,
            "labelkeep" => RelabelAction::LabelKeep,
            "lowercase" => RelabelAction::Lowercase,
            "uppercase" => RelabelAction::Uppercase,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "unknown relabel action {s:?}"
                )));
            }
        })
    }
}

/// A relabel regex, anchored at both ends; compares by its source text.
#[derive(Clone)]
pub struct RelabelRegex {
    source: String,
    re: Regex,
}

impl RelabelRegex {
    pub fn new(source: &str) -> Result<RelabelRegex, regex::Error> {
        Ok(RelabelRegex {
            source: source.to_string(),
            re: Regex::new(&format!("^(?s:{source})$"))?,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn regex(&self) -> &Regex {
        &self.re
    }
}

impl Default for RelabelRegex {
    fn default() -> Self {
        #[allow(clippy::unwrap_used)] // a constant, valid pattern
        RelabelRegex::new(DEFAULT_REGEX).unwrap()
    }
}

impl PartialEq for RelabelRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for RelabelRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl<'de> Deserialize<'de> for RelabelRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelabelRegex::new(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid regex {s:?}: {e}")))
    }
}

pub const DEFAULT_REGEX: &str = "(.*)";
pub const DEFAULT_SEPARATOR: &str = ";";
pub const DEFAULT_REPLACEMENT: &str = "$1";

/// One relabel rule, as written in the file.
#[derive(Clone, Debug, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelabelConfig {
    #[serde(default)]
    pub source_labels: Vec<String>,
    /// Default `;`.
    #[serde(default)]
    pub separator: Option<String>,
    /// Default `(.*)`.
    #[serde(default)]
    pub regex: RelabelRegex,
    #[serde(default)]
    pub modulus: Option<u64>,
    #[serde(default)]
    pub target_label: Option<String>,
    /// Default `$1`.
    #[serde(default)]
    pub replacement: Option<String>,
    #[serde(default)]
    pub action: RelabelAction,
}

impl RelabelConfig {
    pub fn separator(&self) -> &str {
        self.separator.as_deref().unwrap_or(DEFAULT_SEPARATOR)
    }

    pub fn replacement(&self) -> &str {
        self.replacement.as_deref().unwrap_or(DEFAULT_REPLACEMENT)
    }

    pub fn target(&self) -> &str {
        self.target_label.as_deref().unwrap_or("")
    }

    /// Prometheus's checks of `relabel.Config.Validate`.
    pub fn validate(&self) -> Result<(), String> {
        use RelabelAction::*;
        let a = self.action;
        if a == HashMod && self.modulus.unwrap_or(0) == 0 {
            return Err("action hashmod requires a non-zero 'modulus'".into());
        }
        if matches!(
            a,
            Replace | HashMod | Lowercase | Uppercase | KeepEqual | DropEqual
        ) && self.target().is_empty()
        {
            return Err(format!("action {} requires 'target_label'", a.as_str()));
        }
        if a == Replace && !is_valid_replace_target(self.target()) {
            return Err(format!(
                "{:?} is an invalid 'target_label' for action replace",
                self.target()
            ));
        }
        if matches!(a, HashMod | Lowercase | Uppercase | KeepEqual | DropEqual)
            && !is_valid_label_name(self.target())
        {
            return Err(format!(
                "{:?} is an invalid 'target_label' for action {}",
                self.target(),
                a.as_str()
            ));
        }
        if matches!(a, LabelDrop | LabelKeep)
            && (!self.source_labels.is_empty()
                || self.target_label.is_some()
                || self.modulus.is_some()
                || self.separator() != DEFAULT_SEPARATOR
                || self.replacement() != DEFAULT_REPLACEMENT)
        {
            return Err(format!(
                "action {} requires only 'regex', and no other fields",
                a.as_str()
            ));
        }
        if matches!(a, KeepEqual | DropEqual)
            && (self.regex.as_str() != DEFAULT_REGEX
                || self.modulus.is_some()
                || self.separator() != DEFAULT_SEPARATOR
                || self.replacement() != DEFAULT_REPLACEMENT)
        {
            return Err(format!(
                "action {} requires only 'source_labels' and 'target_label', and no other fields",
                a.as_str()
            ));
        }
        for l in &self.source_labels {
            if l.is_empty() {
                return Err("empty name in 'source_labels'".into());
            }
        }
        Ok(())
    }
}

/// Replace targets may contain `$1` / `${name}` templates.
fn is_valid_replace_target(t: &str) -> bool {
    use std::sync::OnceLock;
    static RE: OnceLock<Regex> = OnceLock::new();
    // Prometheus's relabelTarget pattern.
    #[allow(clippy::unwrap_used)] // a constant, valid pattern
    RE.get_or_init(|| Regex::new(r"^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$").unwrap())
        .is_match(t)
}

/// Applies `configs` in order. Returns false when the label set is dropped.
pub fn process(configs: &[RelabelConfig], labels: &mut LabelMap) -> bool {
    configs.iter().all(|c| apply(c, labels))
}

fn get<'a>(labels: &'a LabelMap, name: &str) -> &'a str {
    labels.get(name).map(String::as_str).unwrap_or("")
}

fn set(labels: &mut LabelMap, name: &str, value: String) {
    if value.is_empty() {
        labels.remove(name);
    } else {
        labels.insert(name.to_string(), value);
    }
}

fn apply(cfg: &RelabelConfig, labels: &mut LabelMap) -> bool {
    let mut val = String::new();
    for (i, name) in cfg.source_labels.iter().enumerate() {
        if i > 0 {
            val.push_str(cfg.separator());
        }
        val.push_str(get(labels, name));
    }
    let re = cfg.regex.regex();
    match cfg.action {
        RelabelAction::Drop => return !re.is_match(&val),
        RelabelAction::Keep => return re.is_match(&val),
        RelabelAction::DropEqual => return get(labels, cfg.target()) != val,
        RelabelAction::KeepEqual => return get(labels, cfg.target()) == val,
        RelabelAction::Replace => {
            let Some(caps) = re.captures(&val) else {
                return true;
            };
            let mut target = String::new();
            expand(re, &caps, cfg.target(), &mut target);
            if !is_valid_label_name(&target) {
                return true;
            }
            let mut res = String::new();
            expand(re, &caps, cfg.replacement(), &mut res);
            set(labels, &target, res);
        }
        RelabelAction::Lowercase => set(labels, cfg.target(), val.to_lowercase()),
        RelabelAction::Uppercase => set(labels, cfg.target(), val.to_uppercase()),
        RelabelAction::HashMod => {
            let h = md5(val.as_bytes());
            let mut low = [0u8; 8];
            low.copy_from_slice(&h[8..]);
            let m = u64::from_be_bytes(low) % cfg.modulus.unwrap_or(1).max(1);
            set(labels, cfg.target(), m.to_string());
        }
        RelabelAction::LabelMap => {
            let snapshot: Vec<(String, String)> =
                labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            for (name, value) in snapshot {
                if let Some(caps) = re.captures(&name) {
                    let mut res = String::new();
                    expand(re, &caps, cfg.replacement(), &mut res);
                    if !res.is_empty() {
                        labels.insert(res, value);
                    }
                }
            }
        }
        RelabelAction::LabelDrop => labels.retain(|k, _| !re.is_match(k)),
        RelabelAction::LabelKeep => labels.retain(|k, _| re.is_match(k)),
    }
    true
}

/// Go's `Regexp.ExpandString` template expansion.
pub fn expand(re: &Regex, caps: &Captures<'_>, template: &str, out: &mut String) {
    let mut t = template;
    while let Some(pos) = t.find('$') {
        out.push_str(&t[..pos]);
        t = &t[pos + 1..];
        if let Some(rest) = t.strip_prefix('$') {
            out.push('$');
            t = rest;
            continue;
        }
        let Some((name, rest)) = extract_name(t) else {
            // Malformed: the `$` is literal text.
            out.push('$');
            continue;
        };
        t = rest;
        match group_number(name) {
            Some(n) => {
                if let Some(m) = caps.get(n) {
                    out.push_str(m.as_str());
                }
            }
            None => {
                if re.capture_names().flatten().any(|n| n == name)
                    && let Some(m) = caps.name(name)
                {
                    out.push_str(m.as_str());
                }
            }
        }
    }
    out.push_str(t);
}

/// `name` or `{name}` at the start of `s` (name = letters, digits, `_`).
fn extract_name(s: &str) -> Option<(&str, &str)> {
    let (brace, body) = match s.strip_prefix('{') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let end = body
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map(|(i, _)| i)
        .unwrap_or(body.len());
    if end == 0 {
        return None;
    }
    let name = &body[..end];
    let rest = &body[end..];
    if brace {
        let rest = rest.strip_prefix('}')?;
        return Some((name, rest));
    }
    Some((name, rest))
}

/// A group number as Go reads it: ASCII digits, no leading zero, < 1e8.
fn group_number(name: &str) -> Option<usize> {
    if name.len() > 1 && name.starts_with('0') {
        return None;
    }
    let mut n: usize = 0;
    for b in name.bytes() {
        if !b.is_ascii_digit() || n >= 100_000_000 {
            return None;
        }
        n = n * 10 + (b - b'0') as usize;
    }
    Some(n)
}

/// MD5 (RFC 1321), for `hashmod` compatibility with Prometheus.
pub fn md5(input: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: [u32; 64] =
        std::array::from_fn(|i| ((i as f64 + 1.0).sin().abs() * 4294967296.0) as u32);
    let (mut a0, mut b0, mut c0, mut d0) =
        (0x67452301u32, 0xefcdab89u32, 0x98badcfeu32, 0x10325476u32);
    let mut msg = input.to_vec();
    let bit_len = (input.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());
    for chunk in msg.chunks_exact(64) {
        let m: [u32; 16] = std::array::from_fn(|i| {
            u32::from_le_bytes([
                chunk[4 * i],
                chunk[4 * i + 1],
                chunk[4 * i + 2],
                chunk[4 * i + 3],
            ])
        });
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f2 = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f2.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a0.to_le_bytes());
    out[4..8].copy_from_slice(&b0.to_le_bytes());
    out[8..12].copy_from_slice(&c0.to_le_bytes());
    out[12..].copy_from_slice(&d0.to_le_bytes());
    out
}
