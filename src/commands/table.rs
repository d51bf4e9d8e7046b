//! The one table renderer of the CLI, shaped like kubectl's (`kubectl get`): upper-case headers,
//! columns separated by three spaces, no borders, `-o wide` for extra and uncut columns,
//! `--no-headers` for scripts.
//!
//! Laid out by comfy-table (widths in display cells).

/// How a column is aligned (numbers read better right-aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// One column: its header and how it behaves in the default and the wide output.
#[derive(Clone, Debug)]
pub struct Column {
    header: String,
    align: Align,
    wide_only: bool,
    /// In the default output, longer cells are cut to this many characters (ending in `…`);
    /// `-o wide` shows them whole.
    max_width: Option<usize>,
}

impl Column {
    /// A left-aligned column; the header is printed upper-case.
    pub fn new(header: &str) -> Column {
        Column {
            header: header.to_uppercase(),
            align: Align::Left,
            wide_only: false,
            max_width: None,
        }
    }

    pub fn right(mut self) -> Column {
        self.align = Align::Right;
        self
    }

    /// Shown only with `-o wide`.
    pub fn wide_only(mut self) -> Column {
        self.wide_only = true;
        self
    }

    /// Cut to `width` characters unless `-o wide`.
    pub fn cut_at(mut self, width: usize) -> Column {
        self.max_width = Some(width.max(2));
        self
    }
}

/// What the user asked for with `-o wide` and `--no-headers`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    pub wide: bool,
    pub no_headers: bool,
}

/// Columns, then rows of cells in column order.
#[derive(Clone, Debug)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
}

/// Space between columns, as kubectl's tabwriter pads.
const GAP: usize = 3;

impl Table {
    pub fn new(columns: Vec<Column>) -> Table {
        Table {
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print as empty, extra cells are ignored.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Table {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, every line ending in `\n`.
    pub fn render(&self, style: Style) -> String {
        let shown: Vec<usize> = (0..self.columns.len())
            .filter(|&i| style.wide || !self.columns[i].wide_only)
            .collect();
        let cell = |row: &[String], i: usize| -> String {
            let text = clean(row.get(i).map_or("", String::as_str));
            match self.columns[i].max_width {
                Some(max) if !style.wide => cut(&text, max),
                _ => text,
            }
        };
        let mut lines: Vec<Vec<String>> = Vec::with_capacity(self.rows.len() + 1);
        if !style.no_headers {
            lines.push(
                shown
                    .iter()
                    .map(|&i| self.columns[i].header.clone())
                    .collect(),
            );
        }
        for row in &self.rows {
            lines.push(shown.iter().map(|&i| cell(row, i)).collect());
        }
        // comfy-table lays the columns out; the preset without borders and a three-space right
        // padding give kubectl's look.
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::NOTHING)
            .set_content_arrangement(comfy_table::ContentArrangement::Disabled);
        for line in lines {
            t.add_row(line);
        }
        for (c, &i) in shown.iter().enumerate() {
            if let Some(column) = t.column_mut(c) {
                let last = c + 1 == shown.len();
                column.set_padding((0, if last { 0 } else { GAP as u16 }));
                column.set_cell_alignment(match self.columns[i].align {
                    Align::Left => comfy_table::CellAlignment::Left,
                    Align::Right => comfy_table::CellAlignment::Right,
                });
            }
        }
        let mut out = String::new();
        if t.row_count() == 0 {
            return out;
        }
        for line in t.lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// One line per row: control characters (newlines, tabs) in a cell would break the columns.
fn clean(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.trim().is_empty() {
        // An empty cell would shift what a reader (or `awk`) sees as the next column.
        "<none>".to_owned()
    } else {
        s
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let mut t = Table::new(vec![
            Column::new("name"),
            Column::new("Attempts").right(),
            Column::new("last error").cut_at(10),
            Column::new("node").wide_only(),
        ]);
        t.row(["nuc-1", "0", "-", "node-a"]);
        t.row(["tower-long-name", "12", "power-on job failed: exit 1", "b"]);
        t
    }

    #[test]
    fn columns_align_like_kubectl_without_borders() {
        let out = table().render(Style::default());
        assert_eq!(
            out,
            "NAME              ATTEMPTS   LAST ERROR\n\
             nuc-1                    0   -\n\
             tower-long-name         12   power-on …\n"
        );
    }

    #[test]
    fn wide_adds_columns_and_cuts_nothing() {
        let out = table().render(Style {
            wide: true,
            no_headers: false,
        });
        assert_eq!(
            out,
            "NAME              ATTEMPTS   LAST ERROR                    NODE\n\
             nuc-1                    0   -                             node-a\n\
             tower-long-name         12   power-on job failed: exit 1   b\n"
        );
    }

    #[test]
    fn no_headers_prints_only_rows() {
        let out = table().render(Style {
            wide: false,
            no_headers: true,
        });
        assert_eq!(out.lines().count(), 2);
        assert!(out.starts_with("nuc-1 "), "{out}");
        // Widths come from the rows alone.
        assert!(out.contains("tower-long-name   12"), "{out}");
    }

    #[test]
    fn cells_stay_on_one_line_and_are_never_blank() {
        let mut t = Table::new(vec![Column::new("a"), Column::new("b")]);
        t.row(["x\ny", ""]);
        assert_eq!(t.render(Style::default()), "A     B\nx y   <none>\n");
    }
}
