"""Every table as CSV (for analysis), Markdown (for READMEs and issues) and LaTeX (for papers)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from refbench.results.tables import Cell, Table, aligned, with_interval_text

FORMATS = ("csv", "md", "tex")


def to_csv(table: Table) -> str:
    """One column per figure; an interval adds '<column> low' and '<column> high' columns."""
    has_interval = [any(row[j].low is not None for row in table.rows) for j in range(len(table.columns))]
    header: list[str] = []
    for name, extra in zip(table.columns, has_interval):
        header += [name, f"{name} low", f"{name} high"] if extra else [name]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        line: list[str] = []
        for cell, extra in zip(row, has_interval):
            line += [cell.text, cell.low or "", cell.high or ""] if extra else [cell.text]
        writer.writerow(line)
    return out.getvalue()


def to_markdown(table: Table) -> str:
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731
    bold = lambda c: f"**{c.text}**" if c.best else c.text  # noqa: E731
    body = [[escape(with_interval_text(Cell(bold(c), low=c.low, high=c.high))) for c in row]
            for row in table.rows]
    return "\n".join([f"**{escape(table.title)}**", "", *aligned([table.columns, *body], markdown=True),
                      "", *table.notes]) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "†": r"\textsuperscript{\dag}", "Δ": r"$\Delta$",
                  "−": "-", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A booktabs table; intervals in script size after their figure."""
    def cell(c: Cell) -> str:
        text = latex_escape(c.text)
        if c.best:
            text = f"\\textbf{{{text}}}"
        return text if c.low is None else f"{text} {{\\scriptsize[{latex_escape(c.low)}, {latex_escape(c.high or '')}]}}"

    spec = "l" + "r" * (len(table.columns) - 1)
    lines = [r"% needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             f"\\caption{{{latex_escape(table.title)}}}", f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in table.columns) + r" \\", r"\midrule",
             *(" & ".join(cell(c) for c in row) + r" \\" for row in table.rows),
             r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines.append(r"\par\footnotesize " + " ".join(latex_escape(n) for n in table.notes))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_exports(table: Table, folder: Path) -> dict[str, str]:
    """Write the table in every format under ``folder``; returns format -> file name."""
    folder.mkdir(parents=True, exist_ok=True)
    writers = {"csv": to_csv, "md": to_markdown, "tex": to_latex}
    names = {}
    for fmt in FORMATS:
        name = f"{table.slug}.{fmt}"
        (folder / name).write_text(writers[fmt](table), encoding="utf-8")
        names[fmt] = name
    return names
