"""virtguests.query's small types: what ``virsh domstate --reason`` says."""

from __future__ import annotations

import pytest

from virtguests.query import DomState


@pytest.mark.parametrize(("state", "shut_off", "paused", "saving", "saved"), [
    (DomState("paused", "saving"), False, True, True, False),
    (DomState("paused", "user"), False, True, False, False),
    (DomState("shut off", "saved"), True, False, False, True),
    (DomState("shut off", "shutdown"), True, False, False, False),
    (DomState("running", "booted"), False, False, False, False),
])
def test_domstate_words(state: DomState, shut_off: bool, paused: bool, saving: bool,
                        saved: bool) -> None:
    assert (state.shut_off, state.paused, state.saving, state.saved) == (
        shut_off, paused, saving, saved)
    assert str(state) == f"{state.state} ({state.reason})"
