"""An export verifies; every kind of tampering fails and names its position."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordcore.audit.checkpoint import Checkpoint, key_id, load_public_key
from coordcore.audit.history import export
from coordcore.audit.verify import verify_lines
from tests.audit.helpers import open_audited, some_history

KEY = Ed25519PrivateKey.generate()
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    import asyncio

    d = tmp_path_factory.mktemp("audit")

    async def go() -> None:
        svc, store = await open_audited(d, KEY)
        await some_history(svc)
        await store.request_checkpoint(svc)
        await svc.snapshot()
        await some_history(svc)
        await store.request_checkpoint(svc)
        await svc.close()

    asyncio.run(go())
    return list(export(d / "audit"))


def records(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if json.loads(line)["type"] == "record"]


def test_an_export_verifies(lines: list[str]) -> None:
    report = verify_lines(lines, KEY.public_key())
    assert report.ok, report.problems
    assert report.replayed and report.checkpoints == 2 and report.records == len(records(lines)) > 10


def edit_record(line: str) -> str:
    obj = json.loads(line)
    leaf = bytearray(base64.b64decode(obj["leaf"]))
    leaf[-1] ^= 1  # one byte of the record (or of its user names)
    obj["leaf"] = base64.b64encode(bytes(leaf)).decode()
    return json.dumps(obj)


def test_one_flipped_byte_fails_at_its_line(lines: list[str]) -> None:
    at = records(lines)[5]
    bad = [*lines[:at], edit_record(lines[at]), *lines[at + 1:]]
    problems = verify_lines(bad, KEY.public_key()).problems
    assert problems and problems[0].startswith(f"line {at + 1}: record ") and "does not prove" in problems[0]


def test_a_flipped_byte_anywhere_in_the_text_fails(lines: list[str]) -> None:
    at = records(lines)[3]
    line = lines[at]
    pos = line.index('"proof"') + 12
    bad = [*lines[:at], line[:pos] + ("0" if line[pos] != "0" else "1") + line[pos + 1:], *lines[at + 1:]]
    assert any(p.startswith(f"line {at + 1}:") for p in verify_lines(bad, KEY.public_key()).problems)


def test_a_dropped_record_is_named(lines: list[str]) -> None:
    at = records(lines)[4]
    index = json.loads(lines[at])["index"]
    problems = verify_lines([*lines[:at], *lines[at + 1:]], KEY.public_key()).problems
    assert problems[0] == (f"line {at + 1}: record {index + 1} where record {index} belongs: "
                           "a record is missing (dropped)")


def test_two_swapped_records_are_named(lines: list[str]) -> None:
    a, b = records(lines)[2:4]
    bad = list(lines)
    bad[a], bad[b] = bad[b], bad[a]
    problems = verify_lines(bad, KEY.public_key()).problems
    assert problems[0].startswith(f"line {a + 1}: record ")


def test_an_inserted_forgery_is_named(lines: list[str]) -> None:
    at = records(lines)[6]
    forged = edit_record(lines[at])  # a plausible record with a real record's index and proof
    problems = verify_lines([*lines[:at], forged, *lines[at:]], KEY.public_key()).problems
    assert problems[0].startswith(f"line {at + 1}: record ") and "does not prove" in problems[0]


def test_renumbered_tail_after_a_drop_still_fails(lines: list[str]) -> None:
    at = records(lines)[4]
    bad = [*lines[:at]]
    for line in lines[at + 1:]:
        obj = json.loads(line)
        obj["index"] -= 1  # hide the gap
        bad.append(json.dumps(obj))
    problems = verify_lines(bad, KEY.public_key()).problems
    assert problems[0].startswith(f"line {at + 1}: record ") and "does not prove" in problems[0]


def test_a_checkpoint_signed_by_another_key_fails(lines: list[str]) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    problems = verify_lines(lines, other).problems
    kid, size = key_id(KEY.public_key()), [json.loads(lines[n])["size"] for n in (1, 2)]
    assert problems[:2] == [f"line {n + 2}: checkpoint of size {size[n]} is signed by key {kid}, which is not "
                            f"a trusted key (trusted: {key_id(other)})" for n in (0, 1)]
    assert verify_lines(lines, [other, KEY.public_key()]).ok  # one of the keys given is enough


def test_checkpoints_name_their_key_id_under_the_signature(lines: list[str]) -> None:
    obj = json.loads(lines[1])
    assert obj["key_id"] == key_id(KEY.public_key()) and len(obj["key_id"]) == 8
    cp = Checkpoint.from_json(obj)
    assert cp.body().startswith(f"coordcore-audit/v2\n{obj['key_id']}\n".encode())
    # Another key's id with this key's signature: the keyring looks up a key the
    # signature is not of (the body changed); a key_id that does not match the key is
    # refused when read.
    obj["key_id"] = "0" * 8
    assert "not the id of the key" in verify_lines([lines[0], json.dumps(obj), *lines[2:]], KEY.public_key()).problems[0]


def test_the_v1_format_still_verifies() -> None:
    """An export written before checkpoints named their key id (by the code of that time)."""
    v1 = (DATA / "v1-export.jsonl").read_text().splitlines()
    assert all("key_id" not in json.loads(line) for line in v1)
    public = load_public_key(DATA / "v1.pub")
    report = verify_lines(v1, public)
    assert report.ok and report.checkpoints == 2 and report.replayed, report.problems
    assert not verify_lines(v1, Ed25519PrivateKey.generate().public_key()).ok
    obj = json.loads(v1[1])
    obj["revision"] += 1  # the v1 body is what was signed: an edit of it fails
    problems = verify_lines([v1[0], json.dumps(obj), *v1[2:]], public).problems
    assert problems[0] == f"line 2: checkpoint of size {obj['size']} does not carry a valid signature of key " \
                          f"{key_id(public)} (forged or edited)"


def test_edited_events_fail_the_replay(lines: list[str]) -> None:
    at = next(i for i in records(lines) if json.loads(lines[i])["events"])
    obj = json.loads(lines[at])
    obj["events"][0]["user"] = "mallory"
    problems = verify_lines([*lines[:at], json.dumps(obj), *lines[at + 1:]], KEY.public_key()).problems
    assert problems == [f"line {at + 1}: record {obj['index']}: its exported events differ from what "
                        "replaying it gives"]


@pytest.mark.parametrize("garbage", [[], ["{"], ["[]" * 3], ['{"type":"export","version":1}']])
def test_garbage_is_a_clear_failure(garbage: list[str]) -> None:
    report = verify_lines(garbage, KEY.public_key())
    assert not report.ok


def test_a_truncated_export_fails(lines: list[str]) -> None:
    problems = verify_lines(lines[:-3], KEY.public_key()).problems
    assert len(problems) == 1 and problems[0].startswith("end of export: records ")


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_single_byte_edit_fails(lines: list[str], data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(lines) - 1))
    raw = lines[at].encode()
    pos = data.draw(st.integers(0, len(raw) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
    edited = (raw[:pos] + bytes([new]) + raw[pos + 1:]).decode(errors="replace")
    if edited == lines[at]:
        return  # an invalid byte replaced by itself
    report = verify_lines([*lines[:at], edited, *lines[at + 1:]], KEY.public_key())
    assert not report.ok, (at, pos, new)
