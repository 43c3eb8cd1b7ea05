"""
Tests for the C{meshproxy} command line, L{meshproxy.cli}.
"""

import io
from contextlib import redirect_stderr, redirect_stdout

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.cli import main


class CheckTests(SynchronousTestCase):
    def run_check(self, text):
        path = FilePath(self.mktemp())
        path.setContent(text.encode())
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = main(["check", path.path])
        return status, out.getvalue(), err.getvalue(), path

    def test_ok(self):
        status, out, err, path = self.run_check(
            '[[upstreams]]\nlisten = "tcp:9001"\nservice = "web"\n'
            '[services.web]\nendpoints = [{ address = "127.0.0.1:8080" }, { address = "127.0.0.1:8081" }]\n'
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out,
            f"{path.path}: ok: 0 inbound listener(s), 1 upstream listener(s), "
            "1 service(s) with 2 endpoint(s), admin on tcp:4191:interface=127.0.0.1\n",
        )

    def test_everyProblem(self):
        """
        C{meshproxy check} prints every problem, one a line naming the file
        and the key, and exits 1.
        """
        status, out, err, path = self.run_check(
            '[proxy]\ndetect_timout = "1s"\n[[inbound]]\nlisten = "tcp:1"\napp = "nope"\n'
        )
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err.splitlines(),
            [
                f"{path.path}: proxy.detect_timout: unknown key",
                f"{path.path}: inbound[0].app: expected \"host:port\", got 'nope'",
                "2 problem(s) found",
            ],
        )
