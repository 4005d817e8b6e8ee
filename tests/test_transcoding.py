"""The event store's transcoder reads back exactly what the library's would."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder
from hypothesis import given, settings
from hypothesis import strategies as st

from erp.transcoding import MsgspecJSONTranscoder


def _registered(transcoder: JSONTranscoder) -> JSONTranscoder:
    Application.register_transcodings(None, transcoder)  # type: ignore[arg-type]  # uses no state
    return transcoder


LIBRARY = _registered(JSONTranscoder())
OURS = _registered(MsgspecJSONTranscoder())

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.uuids() | st.decimals(allow_nan=False) | st.datetimes(timezones=st.just(UTC))
    # a stored dict that looks like a transcoded value, known or not
    | st.fixed_dictionaries({"_type_": st.sampled_from(["uuid_hex", "decimal_str", "other"]),
                             "_data_": st.text()}),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=25,
)


def _read(transcoder: JSONTranscoder, data: bytes) -> Any:
    try:
        return transcoder.decode(data)
    except Exception as error:  # the same refusal counts as the same answer
        return type(error)


@settings(max_examples=2000)
@given(_values)
def test_what_the_library_wrote_reads_back_as_the_library_reads_it(value: Any) -> None:
    data = LIBRARY.encode(value)
    assert repr(_read(OURS, data)) == repr(_read(LIBRARY, data))


@given(st.binary() | st.text().map(str.encode))
def test_garbage_is_refused_or_read_as_the_library_does(data: bytes) -> None:
    assert repr(_read(OURS, data)) == repr(_read(LIBRARY, data))


def test_numbers_json_reads_and_msgspec_refuses_are_read_as_the_library_does() -> None:
    data = b'{"big":123456789012345678901234567890,"nan":NaN,"surrogate":"\\ud800"}'
    assert repr(OURS.decode(data)) == repr(LIBRARY.decode(data))
