"""
atheris target: the HTTP/1 request and response readers of
L{meshproxy.http.h1}.

Run: python tests/fuzz/fuzz_h1.py -max_total_time=600 [corpus]
"""

import sys

import atheris

with atheris.instrument_imports():
    from meshproxy.http.h1 import DATA, END, ERROR, HEAD, INFORMATIONAL, UPGRADE, ProtocolError, RequestReader, ResponseReader

_KINDS = {HEAD, DATA, END, UPGRADE, INFORMATIONAL, ERROR}


def outcome(reader, chunks):
    result = []
    for chunk in chunks:
        for kind, value in reader.feed(chunk):
            assert kind in _KINDS, kind
            if kind == DATA:
                if result and result[-1][0] == DATA:
                    result[-1] = (DATA, result[-1][1] + value)
                else:
                    result.append((DATA, value))
            elif kind in (HEAD, INFORMATIONAL):
                fields = tuple(value.headers)
                result.append((kind, repr(type(value)), fields, getattr(value, "reason", None),
                               getattr(value, "target", None), value.contentLength, value.chunked))
            elif kind == ERROR:
                assert isinstance(value, ProtocolError), value
                result.append((ERROR, value.status))
                return result
            elif kind == UPGRADE:
                result.append((UPGRADE,))
                return result
            else:
                result.append((kind, value))
    return result


def testOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    make = RequestReader if data[0] & 1 else ResponseReader
    split = data[1] % len(data)
    data = data[2:]
    whole = outcome(make(), [data])
    pieces = outcome(make(), [data[:split], data[split:]])
    assert whole == pieces, (whole, pieces)


def main() -> None:
    atheris.Setup(sys.argv, testOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
