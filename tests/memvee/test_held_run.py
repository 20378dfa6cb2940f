"""An import holds a user's run of lines until all of it is checked: a short run in
memory with its decoded events, a long one in a temporary file, decoded again as it is
stored, so that an export of any length imports in bounded memory."""

from __future__ import annotations

import json

from memvee._held_run import HeldRun


def _line(version: int) -> str:
    return json.dumps({"user_id": "ann", "version": version, "state": {"text": f"m{version}"}})


def _decode(line: str) -> tuple[str, int]:
    return ("decoded", json.loads(line)["version"])


def test_a_short_run_keeps_its_lines_and_events_in_memory() -> None:
    run = HeldRun("ann", 7, kept=3)
    for version in (1, 2, 3):
        run.add(_line(version), ("held", version))
    assert (run.user_id, run.first_line, len(run), run.spilled) == ("ann", 7, 3, False)
    assert list(run.lines()) == [_line(1), _line(2), _line(3)]
    assert list(run.events(1, _decode)) == [("held", 2), ("held", 3)]
    run.close()


def test_a_long_run_goes_to_a_file_and_its_events_are_decoded_again() -> None:
    run = HeldRun("ann", 1, kept=3)
    for version in range(1, 11):
        run.add(_line(version), ("held", version))
    assert (len(run), run.spilled) == (10, True)
    assert [json.loads(line) for line in run.lines()] == [
        json.loads(_line(v)) for v in range(1, 11)
    ]
    assert list(run.events(8, _decode)) == [("decoded", 9), ("decoded", 10)]
    run.close()
    assert not run.spilled


def test_lines_can_be_read_again_after_a_reading_stopped_part_way() -> None:
    """Comparing a run with a log already stored stops at the log's end; the run's lines
    are read again to be stored."""
    run = HeldRun("ann", 1, kept=1)
    for version in (1, 2, 3):
        run.add(_line(version), None)
    first = run.lines()
    assert json.loads(next(first))["version"] == 1
    del first  # a generator dropped part way is closed: the file must stay open
    assert [json.loads(line)["version"] for line in run.lines()] == [1, 2, 3]
    assert [event for event in run.events(0, _decode)] == [("decoded", v) for v in (1, 2, 3)]
    run.close()


def test_a_line_broken_inside_its_json_is_still_one_line_of_the_file() -> None:
    run = HeldRun("ann", 1, kept=0)
    run.add('{"user_id": "ann",\r\n "version": 1}', None)
    run.add('{"user_id": "ann", "version": 2}\n', None)
    assert [json.loads(line) for line in run.lines()] == [
        {"user_id": "ann", "version": 1},
        {"user_id": "ann", "version": 2},
    ]
    run.close()
