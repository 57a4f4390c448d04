"""docs/PROTOCOL.md cannot drift from the server: its command pages are generated from
coordcore.server.cmddocs, which must describe exactly the commands of the table."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

from tests.server.ccserver import inprocess_server

from coordcore.errors import ERROR_CODES
from coordcore.server.cmddocs import DOCS, MARKER, render_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def table_names(tmp_path: Path) -> set[bytes]:
    async def main() -> set[bytes]:
        async with inprocess_server(tmp_path, locks=True) as server:
            # The names it serves: the table's, and TRACEPARENT, a prefix the read loop resolves.
            return {name for name in server.command_names if name == name.upper()}

    return asyncio.run(main())


def test_every_command_of_the_table_is_documented_and_no_other(tmp_path: Path) -> None:
    names = table_names(tmp_path)
    assert names == set(DOCS), (names - set(DOCS), set(DOCS) - names)
    text = DOC.read_text()
    headings = set(re.findall(r"^### (\S+)$", text, re.M))
    assert headings == {n.decode() for n in names}


def test_the_generated_part_is_current() -> None:
    text = DOC.read_text()
    assert text.count(MARKER) == 1
    assert text[text.index(MARKER):] == render_markdown(), \
        "docs/PROTOCOL.md is stale: regenerate its part below the marker with python -m coordcore.server.cmddocs"


def test_docs_name_real_error_codes_and_reqid_where_it_is_taken() -> None:
    for name, doc in DOCS.items():
        assert set(doc.errors) <= set(ERROR_CODES), name
        for _, sub in doc.subcommands:
            assert set(sub.errors) <= set(ERROR_CODES), sub.name
        assert doc.reqid == any(a.token == "REQID" for a in doc.args), name
    text = DOC.read_text()
    for code in ERROR_CODES:
        assert f"| `{code}` |" in text
