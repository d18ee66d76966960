//! The one renderer: a command hands over typed values, printed as a
//! table (columns padded to their widest cell) or as JSON (their serde
//! form). Nothing is formatted as text and parsed back.

use serde::Serialize;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// A row of a command's table.
pub trait Row: Serialize {
    /// The column titles.
    const HEADER: &'static [&'static str];
    /// The row's cells, one per column.
    fn cells(&self) -> Vec<String>;
}

/// `impl Row` for a row type: its column titles, and each cell made from
/// the row `r`.
macro_rules! table_row {
    ($t:ty, [$($h:literal),* $(,)?], |$r:ident| [$($cell:expr),* $(,)?]) => {
        impl $crate::render::Row for $t {
            const HEADER: &'static [&'static str] = &[$($h),*];
            fn cells(&self) -> Vec<String> {
                let $r = self;
                vec![$(($cell).to_string()),*]
            }
        }
    };
}
pub(crate) use table_row;

/// Rows as a table, or as a JSON array.
pub fn rows<R: Row>(rows: &[R], out: Output) -> anyhow::Result<()> {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Output::Table => print!("{}", table(R::HEADER, rows.iter().map(Row::cells))),
    }
    Ok(())
}

/// One record: "key value" lines, or a JSON object.
pub fn record<T: Serialize>(r: &T, out: Output) -> anyhow::Result<()> {
    let v = serde_json::to_value(r)?;
    match (out, v.as_object()) {
        (Output::Table, Some(fields)) => {
            let w = fields.keys().map(String::len).max().unwrap_or(0);
            for (k, val) in fields {
                println!("{k:<w$}  {val}");
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(&v)?),
    }
    Ok(())
}

/// Columns padded to their widest cell.
pub fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = w[i]))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header);
    for r in &rows {
        out += &line(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// "address:port", IPv6 in brackets.
pub fn sock(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// A conntrack or NAT entry's state, as the tools name it.
pub fn state_name(state: u8) -> &'static str {
    match state {
        sluice_tc_datapath::layout::CT_NEW => "new",
        sluice_tc_datapath::layout::CT_ESTABLISHED => "established",
        _ => "closing",
    }
}

pub fn mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell() {
        let t = table(
            &["A", "LONGER"],
            vec![vec!["xyz".into(), "1".into()], vec!["w".into(), "22".into()]].into_iter(),
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nw    22\n");
    }
}
