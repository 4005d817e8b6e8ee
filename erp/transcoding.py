"""Stored state read by msgspec: the library's JSON transcoder, decoding faster.

The library's `JSONTranscoder` parses with the `json` module and calls an object hook for
every JSON object; that was the largest single cost of turning a stored event into its
message, in the relay and in a rebuild. msgspec parses the same text several times faster;
the transcoded values (`{"_type_": name, "_data_": data}`) are then revived by a walk over
the containers, innermost first, as the object hook would. Writing is the library's.
"""

from __future__ import annotations

from typing import Any

import msgspec
from eventsourcing.persistence import JSONTranscoder

_parse = msgspec.json.Decoder().decode


class MsgspecJSONTranscoder(JSONTranscoder):
    def decode(self, data: bytes) -> Any:
        try:
            parsed = _parse(data)
        except msgspec.DecodeError:
            # What msgspec refuses and `json` reads (NaN, huge numbers, lone surrogates)
            # or refuses with its own error: the library decides.
            return super().decode(data)
        return self._revive(parsed)

    def _revive(self, value: Any) -> Any:
        """`value` with its transcoded values decoded, innermost first (as the object hook)."""
        if type(value) is dict:
            items: Any = value.items()
        elif type(value) is list:
            items = enumerate(value)
        else:
            return value
        for key, item in items:
            if type(item) is dict:
                if len(item) == 2 and type(item.get("_data_")) is str and item.get("_type_") in self.names:
                    value[key] = self.names[item["_type_"]].decode(item["_data_"])  # no call per leaf
                else:
                    value[key] = self._revive(item)
            elif type(item) is list:
                value[key] = self._revive(item)
        if type(value) is dict and len(value) == 2 and "_type_" in value and "_data_" in value:
            return self._decode_obj(value)
        return value
