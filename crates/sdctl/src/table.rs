//! Plain-text tables: columns padded to their widest cell, two spaces
//! apart, optional group labels spanning several columns above the header.
//!
//! ```
//! use sdctl::table::{Align, Table};
//!
//! let mut table = Table::new(&["ID", "PORT"], &[Align::Left, Align::Right]);
//! table.row(vec!["a".into(), "8080".into()]);
//! assert_eq!(table.render(), "ID  PORT\na   8080\n");
//! ```

/// How a column's cells are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Names, addresses.
    Left,
    /// Numbers.
    Right,
}

/// A table being built.
#[derive(Debug, Clone)]
pub struct Table {
    groups: Vec<(String, usize)>,
    header: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

const GAP: &str = "  ";

impl Table {
    /// A table with these column headers; `align` gives each column's
    /// alignment (missing entries are left-aligned).
    pub fn new(header: &[&str], align: &[Align]) -> Self {
        Table {
            groups: Vec::new(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            align: (0..header.len())
                .map(|i| align.get(i).copied().unwrap_or(Align::Left))
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a line of group labels above the header: each `(label, span)`
    /// covers `span` columns, in order. Spans that do not add up to the
    /// number of columns are ignored.
    pub fn groups(mut self, groups: &[(&str, usize)]) -> Self {
        if groups.iter().map(|(_, span)| span).sum::<usize>() == self.header.len() {
            self.groups = groups.iter().map(|(l, s)| ((*l).to_owned(), *s)).collect();
        }
        self
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The number of data rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True if there is no data row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, each line ending in `\n`, without trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        // A group label wider than its columns widens the last of them.
        let mut first = 0;
        for (label, span) in &self.groups {
            let last = first + span - 1;
            let spanned: usize =
                widths[first..=last].iter().sum::<usize>() + GAP.len() * (span - 1);
            let need = label.chars().count();
            if need > spanned {
                widths[last] += need - spanned;
            }
            first += span;
        }
        let mut out = String::new();
        if !self.groups.is_empty() {
            let mut line = String::new();
            let mut first = 0;
            for (i, (label, span)) in self.groups.iter().enumerate() {
                let spanned: usize =
                    widths[first..first + span].iter().sum::<usize>() + GAP.len() * (span - 1);
                if i > 0 {
                    line.push_str(GAP);
                }
                line.push_str(&format!("{label:<spanned$}"));
                first += span;
            }
            push_line(&mut out, &line);
        }
        push_line(&mut out, &self.line(&self.header, &widths));
        for row in &self.rows {
            push_line(&mut out, &self.line(row, &widths));
        }
        out
    }

    fn line(&self, cells: &[String], widths: &[usize]) -> String {
        let mut line = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str(GAP);
            }
            match self.align[i] {
                Align::Left => line.push_str(&format!("{cell:<width$}")),
                Align::Right => line.push_str(&format!("{cell:>width$}")),
            }
        }
        line
    }
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line.trim_end());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_and_groups_span_them() {
        let mut table = Table::new(
            &["backend", "p50", "p99"],
            &[Align::Left, Align::Right, Align::Right],
        )
        .groups(&[("", 1), ("register ms", 2)]);
        table.row(vec!["etcd".into(), "1.5".into(), "12.25".into()]);
        table.row(vec!["zookeeper".into(), "2".into()]);
        assert_eq!(
            table.render(),
            "           register ms\n\
             backend    p50     p99\n\
             etcd       1.5   12.25\n\
             zookeeper    2\n"
        );
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_wide_group_label_widens_its_columns() {
        let mut table =
            Table::new(&["a", "b"], &[Align::Right, Align::Right]).groups(&[("a long label", 2)]);
        table.row(vec!["1".into(), "2".into()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "a long label");
        assert_eq!(lines[1].len(), "a long label".len(), "{text}");
    }
}
