"""The ledger's hash chain: appends verify, any tampering is detected (property-based)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.errors import LedgerError
from pipeline.records.ledger import GENESIS, Ledger

payloads = st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(st.integers(), st.text(max_size=10), st.booleans()), max_size=4)


def test_append_and_verify(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    assert ledger.head() == GENESIS
    first = ledger.append("prepare", {"n": 1})
    second = ledger.append("decision", {"version": 1}, step="base")
    assert second.prev == first.hash
    assert [e.seq for e in ledger.verify()] == [1, 2]
    assert ledger.of_type("decision")[0].step == "base"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(payloads, min_size=1, max_size=6), data=st.data())
def test_any_single_change_breaks_the_chain(tmp_path_factory: pytest.TempPathFactory, entries, data) -> None:
    path = tmp_path_factory.mktemp("ledger") / "ledger.jsonl"
    ledger = Ledger(path)
    for payload in entries:
        ledger.append("event", payload)
    assert len(ledger.verify()) == len(entries)
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line]
    target = data.draw(st.integers(0, len(lines) - 1))
    action = data.draw(st.sampled_from(["edit", "drop", "swap"]))
    if action == "edit":
        raw = json.loads(lines[target])
        raw["data"] = {**raw["data"], "tampered": True}
        lines[target] = json.dumps(raw)
    elif action == "drop":
        if len(lines) == 1:
            return
        del lines[target]
        if target == len(lines):  # dropping the tail is undetectable by a chain alone
            return
    else:
        if len(lines) < 2:
            return
        other = (target + 1) % len(lines)
        lines[target], lines[other] = lines[other], lines[target]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(LedgerError):
        ledger.verify()


def test_garbage_line_names_the_line(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append("a", {})
    with open(ledger.path, "a") as fh:
        fh.write("not json\n")
    with pytest.raises(LedgerError, match="line 2"):
        ledger.verify()
