"""kosoku with its Autobahn compression cases (12.* and 13.*) runnable.

kosoku 0.1.0 (the only release) ports the Autobahn TestSuite's Python 2 cases to a Rust
driver, but hands the 12.x/13.x cases' `onMessage` every echoed message as a `str`
(binary ones as one character per byte), while those cases hash it as `bytes`: every one
of them fails with "Strings must be encoded before hashing" before comparing anything,
whatever the server does. This runner gives those cases the bytes the driver received
(UTF-8 for text, the characters' code points for binary) and otherwise runs kosoku's own
command line unchanged: same arguments, same reports, same exit code.
"""

import sys

import kosoku.cases
from kosoku._cli import main


def _with_bytes(on_message):
    def on_bytes(self, msg, binary):
        if isinstance(msg, str):
            msg = msg.encode("latin-1" if binary else "utf-8")
        return on_message(self, msg, binary)

    return on_bytes


for case in kosoku.cases.CASES.values():
    if case.__name__.startswith(("Case12_", "Case13_")):
        case.onMessage = _with_bytes(case.onMessage)

if __name__ == "__main__":
    sys.argv[0] = "kosoku"
    sys.exit(main())
