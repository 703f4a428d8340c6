//! How the CLI prints: one timestamp format, one spelling of "unknown", tables with headers.

use comfy_table::{presets, Cell, ContentArrangement, Table};

/// What every table and line prints for a value the graph does not have.
pub const UNKNOWN: &str = "-";

/// An epoch-millisecond time as RFC 3339 in UTC with exactly three fraction digits, so every
/// timestamp has the same width (`2026-02-01T10:01:00.000Z`, 24 characters). Logs use the
/// same format (`crate::logging`).
pub fn timestamp_ms(ms: i64) -> String {
    // A constant description: the unit test below proves it parses.
    let fmt = time::format_description::parse_borrowed::<1>(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z",
    )
    .expect("constant format description");
    match time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000) {
        Ok(t) if (0..=9999).contains(&t.year()) => t
            .format(&fmt)
            .unwrap_or_else(|e| format!("{ms} ms (unprintable: {e})")),
        // Outside the years RFC 3339 can write: the raw value says more than a made-up date.
        _ => format!("{ms} ms since 1970"),
    }
}

/// An optional epoch-millisecond time, or [`UNKNOWN`].
pub fn when(ms: Option<i64>) -> String {
    ms.map(timestamp_ms).unwrap_or_else(|| UNKNOWN.into())
}

/// An optional text, or [`UNKNOWN`].
pub fn or_unknown(v: Option<&str>) -> &str {
    // The rule itself: unknown or empty prints as `-`.
    v.filter(|s| !s.is_empty()).unwrap_or(UNKNOWN)
}

/// `n` and the noun, singular or plural (`1 story`, `2 stories`).
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A table with a header row and columns aligned to their widest cell, no borders (so it
/// greps and cuts like ripgrep's or cargo's output) and no wrapping (a long id stays whole).
pub fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(Cell::new));
    for r in rows {
        t.add_row(r);
    }
    // comfy-table pads every cell with a space on each side; the first column's left pad and
    // trailing blanks are noise in a terminal.
    let mut out = String::new();
    for line in t.to_string().lines() {
        // A line without the leading space is kept whole.
        out.push_str(line.strip_prefix(' ').unwrap_or(line).trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_one_fixed_width() {
        // The three shapes main printed: .15Z, .153Z and no fraction at all.
        let a = timestamp_ms(1_769_940_087_150);
        let b = timestamp_ms(1_769_940_087_153);
        let c = timestamp_ms(1_769_940_119_000);
        assert_eq!(a, "2026-02-01T10:01:27.150Z");
        assert_eq!(b, "2026-02-01T10:01:27.153Z");
        assert_eq!(c, "2026-02-01T10:01:59.000Z");
        assert_eq!(timestamp_ms(0), "1970-01-01T00:00:00.000Z");
        for t in [a, b, c] {
            assert_eq!(t.len(), 24);
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                .expect("RFC 3339");
        }
    }

    #[test]
    fn tables_have_a_header_and_aligned_columns() {
        let t = table(
            &["STORY", "TASK"],
            [
                vec!["US-1".into(), "T-1".into()],
                vec!["US-a-very-long-story-id-0001".into(), "T-2".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("STORY"), "{t}");
        let col = |l: &str, w: &str| l.find(w).unwrap();
        assert_eq!(col(lines[0], "TASK"), col(lines[1], "T-1"), "{t}");
        assert_eq!(col(lines[0], "TASK"), col(lines[2], "T-2"), "{t}");
    }

    #[test]
    fn counts_agree_in_number() {
        assert_eq!(count(1, "story", "stories"), "1 story");
        assert_eq!(count(2, "story", "stories"), "2 stories");
        assert_eq!(count(0, "task", "tasks"), "0 tasks");
    }
}
