"""
atheris target: the protocol classifier of L{meshproxy.detect}.

Run: python tests/fuzz/fuzz_detect.py -max_total_time=600 [corpus]
"""

import sys

import atheris

with atheris.instrument_imports():
    from meshproxy.detect import Classifier


def testOneInput(data: bytes) -> None:
    if not data:
        return
    split = data[0] % (len(data))
    data = data[1:]
    whole = Classifier(8192)
    verdict = whole.feed(data)
    pieces = Classifier(8192)
    first = pieces.feed(data[:split])
    second = first if first is not None else pieces.feed(data[split:])
    # A verdict on a prefix is certain, so it is the verdict on the whole.
    if first is not None:
        assert first == verdict, (first, verdict)
    else:
        assert second == verdict, (second, verdict)
    if verdict is None:
        whole.timeout()
        pieces.closed()


def main() -> None:
    atheris.Setup(sys.argv, testOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
