"""
atheris target: the configuration loader of L{meshproxy.config}.

Run: python tests/fuzz/fuzz_config.py -max_total_time=600 [corpus]
"""

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from meshproxy.config import ConfigError, load

_DIRECTORY = tempfile.mkdtemp(prefix="meshproxy-fuzz-")
_PATH = os.path.join(_DIRECTORY, "meshproxy.toml")
for _name in ("ca.pem", "cert.pem", "key.pem", "join.token"):
    open(os.path.join(_DIRECTORY, _name), "wb").close()


def testOneInput(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        load(_PATH)
    except ConfigError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, testOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
