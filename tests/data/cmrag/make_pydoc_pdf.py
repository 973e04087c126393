"""Render CPython's ``pydoc_data`` help topics to a small PDF: the committed CMRAG development document.

One A5 page per topic (its title, then the first lines of the topic text that fit the page). The committed
``pydoc_topics.pdf`` was written by this script from CPython 3.11.7's ``pydoc_data.topics`` (text under the PSF
License, see ATTRIBUTION.md); another CPython gives slightly different text, so the tests read the committed file.

    .venv/bin/python tests/data/cmrag/make_pydoc_pdf.py tests/data/cmrag/pydoc_topics.pdf
"""
from __future__ import annotations

import datetime
import sys
import warnings
import textwrap

import pydoc_data.topics
from fpdf import FPDF

warnings.filterwarnings("ignore", message="Dimensions for page format")

#: the topics rendered, one page each, in this order (page i+1 = TOPICS[i])
TOPICS = (
    "assert", "break", "continue", "del", "for", "global", "if", "import", "lambda", "nonlocal", "pass", "raise",
    "return", "try", "while", "with", "yield", "booleans", "dict", "floating", "integers", "slicings", "truth",
    "string-methods",
)
LINES_PER_PAGE = 40
WIDTH = 64


def page_lines(topic: str) -> list[str]:
    out: list[str] = []
    for para in pydoc_data.topics.topics[topic].splitlines():
        out += textwrap.wrap(para, WIDTH) or [""]
        if len(out) >= LINES_PER_PAGE:
            break
    return out[:LINES_PER_PAGE]


def render(path: str) -> None:
    pdf = FPDF(format="A5")
    pdf.set_auto_page_break(False)
    pdf.set_creation_date(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))  # reproducible bytes
    for i, topic in enumerate(TOPICS, start=1):
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 14)
        pdf.cell(0, 8, f"Python help topic: {topic}", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Courier", "", 9)
        for line in page_lines(topic):
            pdf.cell(0, 4.2, line.encode("latin-1", "replace").decode("latin-1"), new_x="LMARGIN", new_y="NEXT")
        pdf.set_y(-12)
        pdf.set_font("Helvetica", "", 7)
        pdf.cell(0, 5, f"page {i}", align="C")
    pdf.output(path)


if __name__ == "__main__":
    render(sys.argv[1] if len(sys.argv) > 1 else "pydoc_topics.pdf")
