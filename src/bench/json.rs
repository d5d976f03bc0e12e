//! Reports as JSON in Bencher's metric format, and a saved one read back.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::harness::{Ratio, Report};

/// A metric format document: benchmark name, measure name, value (and bounds).
pub(crate) type Metrics = BTreeMap<String, BTreeMap<String, Measure>>;

/// One measure of one benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Measure {
    pub(crate) value: f64,
    pub(crate) lower_value: Option<f64>,
    pub(crate) upper_value: Option<f64>,
}

/// The metrics of `reports` and `ratios`: per row `latency` (the median, up to
/// the p99, in nanoseconds), `p90`, `p99`, `p99_9`, `max`, and `allocations` and
/// `bytes` per operation where counted; per ratio `ratio` (the median, from the
/// 25th to the 75th percentile of per-round ratios).
pub(crate) fn metrics(reports: &[Report], ratios: &[Ratio]) -> Metrics {
    let mut metrics = Metrics::new();
    let plain = |value: f64| Measure {
        value,
        ..Measure::default()
    };
    for report in reports {
        for row in &report.rows {
            let name = if report.rows.len() == 1 && row.name == report.name {
                report.name.clone()
            } else {
                format!("{}/{}", report.name, row.name)
            };
            let s = row.latency;
            let mut measures = BTreeMap::new();
            measures.insert(
                "latency".to_owned(),
                Measure {
                    value: s.median,
                    lower_value: None,
                    upper_value: Some(s.p99),
                },
            );
            for (measure, value) in [
                ("p90", s.p90),
                ("p99", s.p99),
                ("p99_9", s.p999),
                ("max", s.max),
            ] {
                measures.insert(measure.to_owned(), plain(value));
            }
            for (measure, value) in [("allocations", row.allocations), ("bytes", row.bytes)] {
                if let Some(value) = value {
                    measures.insert(measure.to_owned(), plain(value));
                }
            }
            metrics.insert(name, measures);
        }
    }
    for ratio in ratios {
        let measure = Measure {
            value: ratio.median,
            lower_value: Some(ratio.p25),
            upper_value: Some(ratio.p75),
        };
        let name = format!("{}/vs/{}", ratio.name, ratio.against);
        metrics.insert(name, BTreeMap::from([("ratio".to_owned(), measure)]));
    }
    metrics
}

/// `metrics` as one JSON document.
pub(crate) fn write(metrics: &Metrics) -> String {
    let mut out = String::from("{");
    for (i, (name, measures)) in metrics.iter().enumerate() {
        let _ = write!(
            out,
            "{}\n  {}: {{",
            if i > 0 { "," } else { "" },
            quoted(name)
        );
        for (j, (measure, m)) in measures.iter().enumerate() {
            let _ = write!(
                out,
                "{}{}: {{\"value\": {}",
                if j > 0 { ", " } else { "" },
                quoted(measure),
                number(m.value)
            );
            if let Some(lower) = m.lower_value {
                let _ = write!(out, ", \"lower_value\": {}", number(lower));
            }
            if let Some(upper) = m.upper_value {
                let _ = write!(out, ", \"upper_value\": {}", number(upper));
            }
            out.push('}');
        }
        out.push('}');
    }
    out.push_str("\n}\n");
    out
}

fn number(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else {
        "null".to_owned()
    }
}

fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Reads a document [`write`] wrote (or any in the metric format); the message
/// says where it went wrong.
pub(crate) fn read(text: &str) -> Result<Metrics, String> {
    let mut parser = Parser {
        text: text.as_bytes(),
        at: 0,
    };
    let mut metrics = Metrics::new();
    parser.object(|parser, name| {
        let mut measures = BTreeMap::new();
        parser.object(|parser, measure| {
            let mut m = Measure::default();
            parser.object(|parser, field| {
                let value = parser.number()?;
                match field.as_str() {
                    "value" => m.value = value.unwrap_or(f64::NAN),
                    "lower_value" => m.lower_value = value,
                    "upper_value" => m.upper_value = value,
                    _ => {}
                }
                Ok(())
            })?;
            measures.insert(measure, m);
            Ok(())
        })?;
        metrics.insert(name, measures);
        Ok(())
    })?;
    Ok(metrics)
}

/// Just enough JSON for the metric format: objects of objects of numbers.
struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn fail<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.at))
    }

    fn skip_blanks(&mut self) {
        while self.text.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        self.skip_blanks();
        if self.text.get(self.at) != Some(&byte) {
            return self.fail(&format!("expected '{}'", byte as char));
        }
        self.at += 1;
        Ok(())
    }

    /// An object, each member's value read by `member` given its name.
    fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, String) -> Result<(), String>,
    ) -> Result<(), String> {
        self.expect(b'{')?;
        self.skip_blanks();
        if self.text.get(self.at) == Some(&b'}') {
            self.at += 1;
            return Ok(());
        }
        loop {
            let name = self.string()?;
            self.expect(b':')?;
            member(self, name)?;
            self.skip_blanks();
            match self.text.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return self.fail("expected ',' or '}'"),
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            let Some(&byte) = self.text.get(self.at) else {
                return self.fail("unterminated string");
            };
            self.at += 1;
            match byte {
                b'"' => return Ok(out),
                b'\\' => {
                    let Some(&escaped) = self.text.get(self.at) else {
                        return self.fail("unterminated escape");
                    };
                    self.at += 1;
                    match escaped {
                        b'u' => {
                            let hex = self.text.get(self.at..self.at + 4).unwrap_or_default();
                            let code = std::str::from_utf8(hex)
                                .ok()
                                .and_then(|h| u32::from_str_radix(h, 16).ok());
                            let Some(c) = code.and_then(char::from_u32) else {
                                return self.fail("bad \\u escape");
                            };
                            out.push(c);
                            self.at += 4;
                        }
                        b'n' => out.push('\n'),
                        b't' => out.push('\t'),
                        b'r' => out.push('\r'),
                        other => out.push(other as char),
                    }
                }
                _ => {
                    // Copy the whole UTF-8 sequence that starts here.
                    let start = self.at - 1;
                    while self.text.get(self.at).is_some_and(|b| b & 0xc0 == 0x80) {
                        self.at += 1;
                    }
                    match std::str::from_utf8(&self.text[start..self.at]) {
                        Ok(piece) => out.push_str(piece),
                        Err(_) => return self.fail("invalid UTF-8"),
                    }
                }
            }
        }
    }

    /// A number, or `null` (`None`).
    fn number(&mut self) -> Result<Option<f64>, String> {
        self.skip_blanks();
        if self.text[self.at..].starts_with(b"null") {
            self.at += 4;
            return Ok(None);
        }
        let start = self.at;
        while self
            .text
            .get(self.at)
            .is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(b))
        {
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.text[start..self.at]).unwrap_or("");
        match text.parse() {
            Ok(value) => Ok(Some(value)),
            Err(_) => self.fail("expected a number"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_round_trip() {
        let mut metrics = Metrics::new();
        let latency = Measure {
            value: 12.5,
            lower_value: None,
            upper_value: Some(40.0),
        };
        metrics.insert(
            "stub/\"running\"".to_owned(),
            BTreeMap::from([("latency".to_owned(), latency)]),
        );
        let text = write(&metrics);
        assert_eq!(read(&text).unwrap(), metrics);
        assert!(read("{\"a\": {\"latency\": {\"value\": }}}")
            .unwrap_err()
            .contains("byte"));
        assert!(read("").is_err());
    }
}
