"""Data files that are not plain JSON arrays / JSON lines: a UTF-8 byte order mark, a top-level object."""

from __future__ import annotations

import json

import pytest
from train_helpers import conv

from llavakit.train.check import check_data
from llavakit.train.records import read_records

RECS = [{"id": f"r{i}", "conversations": conv("Hi", f"Hello {i}.")} for i in range(3)]


@pytest.mark.parametrize("name", ["d.json", "d.jsonl"])
def test_a_byte_order_mark_is_ignored(tmp_path, name):
    text = json.dumps(RECS, indent=1) if name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in RECS)
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # what Notepad / PowerShell write as "UTF-8"
    assert [r.data for r in read_records(path)] == RECS
    assert check_data(path, None).problems == 0


@pytest.mark.parametrize("name", ["d.json", "d.jsonl"])
def test_a_top_level_object_is_refused_with_what_to_do(tmp_path, name):
    path = tmp_path / name
    path.write_text(json.dumps({"data": RECS}, indent=1))
    with pytest.raises(
        ValueError,
        match=r"expected a JSON array of records \(the LLaVA format\) or JSON lines.*"
        r"'data' \(3 items\) may be the records",
    ):
        read_records(path, on_error="skip", skipped=None)
    with pytest.raises(ValueError, match="expected a JSON array of records"):
        check_data(path, None)
    path.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="got one JSON object with keys 'a'"):
        read_records(path)


def test_one_record_object_and_json_lines_in_a_json_file_still_read(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(RECS[0], indent=2))  # a single record, pretty-printed
    assert [r.data for r in read_records(path)] == RECS[:1]
    path.write_text("".join(json.dumps(r) + "\n" for r in RECS))  # JSON lines saved as .json
    assert [r.data for r in read_records(path)] == RECS
